"""ChannelAttention: the ECA block of the dataflow design (DESIGN.md §1 ``channel_attention``).

Per image, with ``A = 2**act_bits - 1`` and ``rq(v, m, sh) = (v * m + (1 << (sh - 1))) >> sh``::

    p[c] = clamp(rq(S[c], pool_m, pool_sh), 0, A)        S[c] = sum over the map of x[., ., c]
    z[c] = bias + sum_j kernel[j] * p[c + j - (k-1)/2]   (p = 0 outside [0, C))
    i[c] = clamp(rq(z[c], z_m, z_sh), -128, 127)
    a[c] = lut[i[c] + 128]                               (in [0, 256])
    out  = (x * a[c] + 128) >> 8                         (never above x: same width)

Architecture
------------
The whole map is needed before the first output pixel, so the block is three decoupled parts:

* **Input**: every accepted beat goes into an image FIFO (one memory, ``lanes * bits`` wide)
  and is added to per-channel running sums (registers, as :class:`~.gap.GlobalAvgPool`: the
  first pixel restarts them, so no clearing cycle). The beats of the image's last pixel copy
  the completed sums into a *hold* bank and hand it to the attention engine.
* **Attention engine** (sequential over the channels, so its arithmetic does not grow
  with C): POOL issues the C held sums through a requant unit (``p``, clamped to
  ``[0, A]``), one a cycle; CONV runs the k-tap 1-D convolution over channels with
  ``Q = conv_lanes`` multipliers, ``R = ceil(k / Q)`` cycles per channel (by default the
  fewest multipliers that keep the engine within the input's time, see below), and each
  ``z`` goes through the same requant unit
  (the phases never overlap; here clamped to [-128, 127]: :class:`~.requant.Requant` only
  clamps to ``[0, A]``, so the unit is this block's own, with Requant's rounding identity)
  and the table memory, and lands in the ``a`` bank. The hold bank is released when POOL
  has issued its last channel, so the next image's last pixel can be held while CONV runs.
* **Output**: when an image's ``a`` bank is complete it is copied (one cycle, in parallel)
  into the output's own ``a`` registers, which frees the engine's bank for the next image;
  then the image's beats are read from the FIFO, each lane multiplied by its channel's ``a``
  (one ``bits`` × 9-bit multiplier per lane), rounded and shifted by 8.

Throughput. The engine takes :attr:`engine_cycles` ``= C·(R + 1) + 9`` cycles per image
(1 start + C POOL issues + 2 waiting for the last ``p`` + C·R CONV issues + 6 to the last
``a`` write, see :meth:`geometry`); the input takes ``H·W·NB``. The FIFO holds one image plus
the beats that arrive while the engine works (``H·W·NB + min(H·W·NB, engine_cycles) + 8``
entries), so neither side waits for the other: steady-state cycles per image are
``max(H·W·NB, C·(R + 1) + 9)``. The default ``conv_lanes`` is the smallest Q with
``C·(R + 1) + 9 <= H·W·NB`` (cycles = ``H·W·NB``, no overhead), or ``k`` when none fits
(then the engine, ``2·C + 9``, sets the pace: tiny maps with many lanes). One multiplier
(Q = 1, R = k) suffices whenever ``H·W·NB >= C·(k+1) + 9``, e.g. on every map of 8×8 or
more with ``lanes <= 8`` and ``k <= 5`` (``64·ceil(C/8) >= 6·C + 9``).

Registers. Per channel: the running sum and its held copy (``sum_bits`` each, kept as a
rotating ring and a shift chain, so neither needs a multiplexer), ``p`` and the two ``a``
copies (shift chains in channel order); about ``2·sum_bits + act_bits + 18`` flip-flops
per channel on top of a fixed ~400.

Backpressure. ``i.ready`` is the FIFO's room and, on the last pixel, a free hold bank; the
engine's CONV waits until the output has taken the previous ``a`` bank; the output waits for
its ``a`` and for ``o.ready``. Nothing else stalls, so every wait is bounded by a consumer.

Framing. Positions are counted from the elaboration-time shape (the input ``last`` is not
needed); ``last`` is driven on each output image's final beat. Padding lanes are summed and
scaled like the others but never reach a real channel.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .params import ParamKind, param_bus_signature
from .requant import M_BITS, SH_BITS
from .resources import Cost, MemorySpec, Multiplier, fifo_memories
from .shift_unit import position_counter, step_counter
from .stream import beats_per_pixel, pixel_stream, require_int

__all__ = ["ChannelAttention"]

#: Width of an attention value ``a`` in [0, 256] (the table entries).
A_BITS = 9
#: Width of a kernel tap (int8, DESIGN.md: within ``weight_bits`` <= 8).
KERNEL_BITS = 8
#: Width of the scalar ``bias`` (an int32 SCALAR word).
BIAS_BITS = 32
#: Entries of the table.
LUT_DEPTH = 256
#: Cycles from the last POOL issue until the last ``p`` is visible, minus one (the requant
#: unit's two stages).
POOL_DRAIN = 2
#: Cycles of the engine that do not scale with C (1 start + 2 POOL drain + 6 CONV drain).
ENGINE_OVERHEAD = 9
#: FIFO entries beyond one image and the engine's time (output start latency, with margin).
FIFO_MARGIN = 8


class ChannelAttention(wiring.Component):
    """Efficient channel attention (ECA) on a pixel stream; see the module docstring.

    Parameters
    ----------
    width, height : int
        Feature-map size (W, H).
    channels : int
        Channels C.
    lanes : int
        Lanes P of both streams (``NB = ceil(C / P)`` beats per pixel).
    bits : int
        Width of the unsigned values in and out (the output never exceeds the input).
    act_bits : int
        Clamp of the pooled ``p`` (``[0, 2**act_bits - 1]``).
    k : int
        Kernel taps, odd, 1..9.
    layer_id : int
        Layer index compared with ``params.payload.layer`` (kinds SCALAR, KERNEL, LUT).
    conv_lanes : int or None
        Multipliers of the channel convolution, 1..k (None: the fewest that keep the
        engine within ``H·W·NB`` cycles, else ``k``). A planner trading DSP blocks for
        throughput may set it.

    Attributes
    ----------
    i : In(pixel_stream(lanes, bits))
    o : Out(pixel_stream(lanes, bits))
    params : In(param_bus_signature())
        ``ready`` is always 1.
    nb : int
        Beats per pixel.
    sum_bits : int
        Width of a channel sum (unsigned, exact).
    z_bits : int
        Width of the signed ``z`` (exact for any int32 ``bias``).
    engine_cycles : int
        Attention engine cycles per image.
    conv_lanes, conv_steps : int
        Convolution multipliers Q and cycles per channel R = ceil(k / Q).
    fifo_depth : int
        Image FIFO entries.

    Raises
    ------
    ValueError
        An argument out of range (the message names it): sizes must be positive integers,
        ``bits`` and ``act_bits`` in 1..16, ``k`` odd in 1..9, ``layer_id`` in 0..255,
        ``conv_lanes`` None or in 1..k.
    """

    def __init__(self, *, width, height, channels, lanes, bits, act_bits, k, layer_id=0,
                 conv_lanes=None):
        geo = self.geometry(width=width, height=height, channels=channels, lanes=lanes,
                            bits=bits, act_bits=act_bits, k=k, layer_id=layer_id,
                            conv_lanes=conv_lanes)
        self.width, self.height, self.channels, self.lanes = width, height, channels, lanes
        self.bits, self.act_bits, self.k, self.layer_id = bits, act_bits, k, layer_id
        self.nb, self.sum_bits, self.z_bits = geo["nb"], geo["sum_bits"], geo["z_bits"]
        self.engine_cycles, self.fifo_depth = geo["engine_cycles"], geo["fifo_depth"]
        self.conv_lanes, self.conv_steps = geo["conv_lanes"], geo["conv_steps"]
        self._cost_args = dict(width=width, height=height, channels=channels, lanes=lanes,
                               bits=bits, act_bits=act_bits, k=k, layer_id=layer_id,
                               conv_lanes=conv_lanes)
        super().__init__({
            "i": In(pixel_stream(lanes, bits)),
            "o": Out(pixel_stream(lanes, bits)),
            "params": In(param_bus_signature()),
        })

    @staticmethod
    def geometry(*, width, height, channels, lanes, bits, act_bits, k, layer_id=0,
                 conv_lanes=None):
        """Validated sizes, widths, engine cycles, FIFO depth and cycles per image (a dict);
        used by the constructor and :meth:`cost`, so the planner counts what the RTL builds.

        Engine schedule of one image (cycle 0: the engine sees a full hold bank):
        cycle 0 start; 1..C POOL issues; C+1..C+2 wait (the requant unit's two stages: the
        last ``p`` is written at the end of cycle C+2); C+3..C+2+C·R CONV issues
        (``R = ceil(k / conv_lanes)`` per channel); the last ``a`` is written 6 cycles after
        the last issue (operand registers, products, accumulate, requant product,
        shift/saturate, table read), and the engine is back in its start state one cycle
        later: ``C·(R+1) + 9`` cycles.
        """
        name = "ChannelAttention"
        for arg, value in (("width", width), ("height", height), ("channels", channels),
                           ("lanes", lanes)):
            require_int(name, arg, value, 1)
        require_int(name, "bits", bits, 1, 16)
        require_int(name, "act_bits", act_bits, 1, 16)
        require_int(name, "k", k, 1, 9)
        if k % 2 == 0:
            raise ValueError(f"{name}: k must be odd, got {k!r}")
        require_int(name, "layer_id", layer_id, 0, 255)
        if conv_lanes is not None:
            require_int(name, "conv_lanes", conv_lanes, 1, k)
        nb = beats_per_pixel(channels, lanes)
        sum_bits = bits + ceil_log2(width * height)
        if sum_bits + 1 + M_BITS + 1 > 64:
            raise ValueError(f"{name}: width/height: a {width}x{height} map of {bits}-bit "
                             f"values needs {sum_bits}-bit sums, more than supported")
        top = (1 << act_bits) - 1
        half = (k - 1) // 2
        # z = bias + sum of k products kernel (int8) * p (0..top): exact for any int32 bias.
        z_lo = -(1 << (BIAS_BITS - 1)) - k * 128 * top
        z_hi = (1 << (BIAS_BITS - 1)) - 1 + k * 127 * top
        z_bits = Shape.cast(range(z_lo, z_hi + 1)).width
        image = width * height * nb
        if conv_lanes is None:
            # The fewest convolution multipliers that keep the engine within the input's
            # H·W·NB cycles; all k when even that cannot (then the engine sets the pace).
            conv_lanes = k
            for steps in range(k, 0, -1):
                if channels * (steps + 1) + ENGINE_OVERHEAD <= image:
                    conv_lanes = -(-k // steps)
                    break
        steps = -(-k // conv_lanes)
        engine = channels * (steps + 1) + ENGINE_OVERHEAD
        return dict(nb=nb, sum_bits=sum_bits, z_bits=z_bits, op_bits=max(sum_bits + 1, z_bits),
                    half=half, engine_cycles=engine, conv_lanes=conv_lanes, conv_steps=steps,
                    fifo_depth=image + min(image, engine) + FIFO_MARGIN,
                    cycles=max(image, engine))

    @classmethod
    def cost(cls, *, width, height, channels, lanes, bits, act_bits, k, layer_id=0,
             conv_lanes=None):
        """Resources as built (see :mod:`hw.resources`).

        Multipliers: the requant unit shared by the pool and ``z`` (signed
        ``max(sum_bits + 1, z_bits)`` × unsigned 16), ``conv_lanes`` for the convolution
        (signed 8 × unsigned ``act_bits``), and one ``bits`` × 9 scaling multiplier per
        lane: ``1 + conv_lanes + lanes``. Memories: the image FIFO (``lanes * bits`` wide)
        and the 256 × 9 table. Cycles: ``max(H·W·NB, C·(ceil(k / conv_lanes) + 1) + 9)``.
        """
        g = cls.geometry(width=width, height=height, channels=channels, lanes=lanes,
                         bits=bits, act_bits=act_bits, k=k, layer_id=layer_id,
                         conv_lanes=conv_lanes)
        return Cost(
            cycles=g["cycles"],
            multipliers=[
                Multiplier.amaranth("requant", 1, g["op_bits"], True, M_BITS, False),
                Multiplier.amaranth("conv", g["conv_lanes"], KERNEL_BITS, True, act_bits,
                                    False),
                Multiplier.amaranth("scale", lanes, bits, False, A_BITS, False),
            ],
            memories=(fifo_memories("image", lanes * bits, g["fifo_depth"])
                      + [MemorySpec("lut", LUT_DEPTH, A_BITS)]))

    def resources(self):
        """:meth:`cost` of this instance."""
        return self.cost(**self._cost_args)

    def elaborate(self, platform):
        m = Module()
        C, P, NB, K = self.channels, self.lanes, self.nb, self.k
        Q, R = self.conv_lanes, self.conv_steps
        half = (K - 1) // 2
        pixels = self.width * self.height
        ch_bits = max(1, (C - 1).bit_length())

        # ------------------------------------------------------------- parameters
        par = self.params.payload
        mine = self.params.valid & (par.layer == self.layer_id) & (par.row == 0)
        pool_m = Signal(M_BITS)
        pool_sh = Signal(SH_BITS)
        bias = Signal(signed(BIAS_BITS))
        z_m = Signal(M_BITS)
        z_sh = Signal(SH_BITS)
        kernel = [Signal(signed(KERNEL_BITS), name=f"tap{j}") for j in range(K)]
        with m.If(mine & (par.kind == ParamKind.SCALAR)):
            with m.Switch(par.lane):
                for n, reg in enumerate((pool_m, pool_sh, bias, z_m, z_sh)):
                    with m.Case(n):
                        m.d.sync += reg.eq(par.data[:len(reg)])
        with m.If(mine & (par.kind == ParamKind.KERNEL)):
            with m.Switch(par.lane):
                for j in range(K):
                    with m.Case(j):
                        m.d.sync += kernel[j].eq(par.data[:KERNEL_BITS])
        # The table: a 256 × 9 memory (a block RAM), written by the parameter port, read by
        # the engine once per channel.
        m.submodules.lut = lut = Memory(shape=unsigned(A_BITS), depth=LUT_DEPTH, init=[])
        lut_w = lut.write_port()
        lut_r = lut.read_port()
        m.d.comb += [lut_w.en.eq(mine & (par.kind == ParamKind.LUT) & (par.lane < LUT_DEPTH)),
                     lut_w.addr.eq(par.lane[:8]), lut_w.data.eq(par.data[:A_BITS])]

        # ------------------------------------------------------------- input side
        m.submodules.image = img = fifo.SyncFIFOBuffered(width=P * self.bits,
                                                         depth=self.fifo_depth)
        beat = position_counter(NB, "beat")
        pixel = position_counter(pixels, "pixel")
        last_pixel = pixel == pixels - 1
        hold_full = Signal()
        # The last pixel's beats write the hold bank: they wait until the engine has read
        # the previous one (its POOL phase). The FIFO holds the image for the output.
        m.d.comb += self.i.ready.eq(img.w_rdy & (~last_pixel | ~hold_full))
        take = self.i.valid & self.i.ready
        m.d.comb += [img.w_en.eq(take), img.w_data.eq(self.i.payload.data.as_value())]
        step_counter(m, beat, NB, take)
        step_counter(m, pixel, pixels, take & (beat == NB - 1))

        # Running sums: NB rows of P lanes kept as a ring that rotates by one row per beat,
        # so the current beat's row is always sums[0] (no NB-to-1 multiplexer, no row
        # decoder: every register has one fixed source).
        sum_layout = data.ArrayLayout(unsigned(self.sum_bits), P)
        sums = [Signal(sum_layout, name=f"sum{b}") for b in range(NB)]
        new = Signal(sum_layout)
        for l in range(P):
            # The first pixel restarts the sums: no clearing cycle between images.
            m.d.comb += new[l].eq(Mux(pixel == 0, 0, sums[0][l]) + self.i.payload.data[l])
        # Hold bank: a shift chain of NB rows. The last pixel's beats shift their completed
        # sums in at the top (after NB beats row b holds beat b); POOL reads row 0 lane by
        # lane and shifts the chain after each row. Same shift, one fixed source per register.
        hold = [Signal(sum_layout, name=f"hold{b}") for b in range(NB)]
        hold_shift = Signal()
        with m.If(hold_shift):
            m.d.sync += [hold[b].eq(hold[b + 1]) for b in range(NB - 1)]
            m.d.sync += hold[NB - 1].eq(new)
        with m.If(take):
            m.d.sync += [sums[b].eq(sums[b + 1]) for b in range(NB - 1)]
            m.d.sync += sums[NB - 1].eq(new)
            with m.If(last_pixel & (beat == NB - 1)):
                m.d.sync += hold_full.eq(1)

        # ------------------------------------------------------------- attention engine
        # One state register; counters ec (channel) and ej (CONV step of a channel).
        IDLE, POOL, PWAIT, CONV, ZDRAIN = range(5)
        state = Signal(range(5))
        ec = Signal(range(max(C, 2)))
        pl = position_counter(P, "pool_lane")  # POOL: lane of hold row 0
        ej = Signal(range(max(R, 2)))          # CONV step within a channel
        wait = Signal(range(8))
        a_busy = Signal()     # the engine's a bank belongs to an image not yet copied out
        a_full = Signal()     # ... and is complete
        copy = Signal()       # the output copies the a bank this cycle (set below)
        final_write = Signal()

        # Requant unit, shared by POOL (p = clamp(rq(S), 0, A)) and the z requant
        # (i = clamp(rq(z), -128, 127)): the phases never overlap (the next POOL starts after
        # the last z has left the unit), so one multiplier and one barrel shifter serve both.
        # Two stages, as Requant's: R1 the product (a DSP block with its output register),
        # R2 the arithmetic shift t = prod >> (sh - 1) saturated to the mode's [lo, hi].
        # Rounding by Requant's identity: floor((v + 2**(s-1)) / 2**s)
        # == floor((floor(v / 2**(s-1)) + 1) / 2) = (t + 1) >> 1. The clamp is monotonic, so
        # saturating t first changes nothing: pool mode [-1, 2A] gives q in [0, A], z mode
        # [-257, 254] gives q in [-128, 127], with no clamp after the rounding.
        issue_pool = state == POOL
        zacc = Signal(signed(self.z_bits))       # the CONV accumulator (stage 3 below)
        zv3 = Signal()
        ch3 = Signal(ch_bits)
        op_bits = max(self.sum_bits + 1, self.z_bits)
        operand = Signal(signed(op_bits))
        # The chain shifts on every last-pixel beat and after POOL has read a whole row
        # (never both: the last pixel waits while the hold bank is full).
        m.d.comb += hold_shift.eq((take & last_pixel) | (issue_pool & (pl == P - 1)))
        held = Array(hold[0])[pl] if P > 1 else hold[0][0]
        m.d.comb += operand.eq(Mux(issue_pool, held, zacc))
        prod_r1 = Signal(signed(op_bits + M_BITS + 1))
        shm1_r1 = Signal(SH_BITS)
        v_r1, pool_r1 = Signal(), Signal()
        ch_r1 = Signal(ch_bits)
        m.d.sync += [prod_r1.eq(operand * Mux(issue_pool, pool_m, z_m)),
                     # sh = 0 (never loaded) wraps to 63: well-defined garbage.
                     shm1_r1.eq(Mux(issue_pool, pool_sh, z_sh) - 1),
                     v_r1.eq(issue_pool | zv3), pool_r1.eq(issue_pool),
                     ch_r1.eq(Mux(issue_pool, ec, ch3))]
        t_bits = max(self.act_bits + 2, 10)
        top = (1 << self.act_bits) - 1
        shifted = Signal(signed(op_bits + M_BITS + 1))
        lo = Signal(signed(t_bits))
        hi = Signal(signed(t_bits))
        m.d.comb += [shifted.eq(prod_r1 >> shm1_r1),
                     lo.eq(Mux(pool_r1, -1, -257)), hi.eq(Mux(pool_r1, 2 * top, 254))]
        t_r2 = Signal(signed(t_bits))
        v_r2, pool_r2 = Signal(), Signal()
        ch_r2 = Signal(ch_bits)
        m.d.sync += [t_r2.eq(Mux(shifted < lo, lo, Mux(shifted > hi, hi, shifted))),
                     v_r2.eq(v_r1), pool_r2.eq(pool_r1), ch_r2.eq(ch_r1)]
        q = Signal(signed(t_bits))
        m.d.comb += q.eq((t_r2 + 1) >> 1)
        # p arrives in channel order 0..C-1: a shift chain (in at the top, C shifts per
        # image) leaves p[c] in register c with no write decoder.
        p = [Signal(self.act_bits, name=f"p{c}") for c in range(C)]
        with m.If(v_r2 & pool_r2):
            m.d.sync += [p[c].eq(p[c + 1]) for c in range(C - 1)]
            m.d.sync += p[C - 1].eq(q[:self.act_bits])
        # z mode: table read at i + 128 (the 8-bit i with its sign bit flipped).
        m.d.comb += [lut_r.addr.eq(q[:8] ^ 0x80), lut_r.en.eq(1)]
        v_a = Signal()
        ch_a = Signal(ch_bits)
        m.d.sync += [v_a.eq(v_r2 & ~pool_r2), ch_a.eq(ch_r2)]
        # a arrives in channel order too: the same shift chain.
        a_bank = [Signal(A_BITS, name=f"a{c}") for c in range(C)]
        with m.If(v_a):
            m.d.sync += [a_bank[c].eq(a_bank[c + 1]) for c in range(C - 1)]
            m.d.sync += a_bank[C - 1].eq(lut_r.data)
        m.d.comb += final_write.eq(v_a & (ch_a == C - 1))

        with m.Switch(state):
            with m.Case(IDLE):
                with m.If(hold_full):
                    m.d.sync += [state.eq(POOL), ec.eq(0)]
                    if P > 1:
                        m.d.sync += pl.eq(0)
            with m.Case(POOL):
                step_counter(m, pl, P, 1)
                with m.If(ec == C - 1):
                    # The hold bank has been read: the next image's last pixel may fill it.
                    m.d.sync += [state.eq(PWAIT), hold_full.eq(0), wait.eq(0), ec.eq(0)]
                with m.Else():
                    m.d.sync += ec.eq(ec + 1)
            with m.Case(PWAIT):
                # POOL_DRAIN cycles until the last p is written; the a bank must have been
                # taken by the output (a_busy clear; a copy in this cycle clears it too).
                with m.If(wait != POOL_DRAIN - 1):
                    m.d.sync += wait.eq(wait + 1)
                with m.Elif(~a_busy | copy):
                    m.d.sync += [state.eq(CONV), ec.eq(0), ej.eq(0), a_busy.eq(1)]
            with m.Case(CONV):
                with m.If(ej == R - 1):
                    m.d.sync += ej.eq(0)
                    with m.If(ec == C - 1):
                        m.d.sync += state.eq(ZDRAIN)
                    with m.Else():
                        m.d.sync += ec.eq(ec + 1)
                with m.Else():
                    m.d.sync += ej.eq(ej + 1)
            with m.Case(ZDRAIN):
                with m.If(final_write):
                    m.d.sync += state.eq(IDLE)
        with m.If(copy):
            m.d.sync += [a_full.eq(0)]
            with m.If(~((state == PWAIT) & (wait == POOL_DRAIN - 1))):
                m.d.sync += a_busy.eq(0)
        with m.If(final_write):
            m.d.sync += a_full.eq(1)

        # CONV pipeline: Q multipliers, R = ceil(k / Q) steps per channel; in step s multiplier
        # n computes tap j = s·Q + n (a constant 0 tap when j >= k). p is padded with
        # (k-1)/2 zeros in front and enough behind, so tap j of channel c is p_ext[c + j]
        # (no range comparison); off = s·Q is kept as a counter (no multiplier).
        p_ext = ([Const(0, self.act_bits)] * half + p
                 + [Const(0, self.act_bits)] * (R * Q - 1 - half))
        issue = state == CONV
        if R > 1:
            off = Signal(range(R * Q))
            with m.If(issue):
                m.d.sync += off.eq(Mux(ej == R - 1, 0, off + Q))
        else:
            off = Const(0, 1)          # one step: no zero-width counter in the Verilog
        # Stage 1: operands (the multipliers' input registers).
        v1, first1, last1 = Signal(), Signal(), Signal()
        ch1 = Signal(ch_bits)
        k1 = [Signal(signed(KERNEL_BITS), name=f"k1_{n}") for n in range(Q)]
        p1 = [Signal(self.act_bits, name=f"p1_{n}") for n in range(Q)]
        m.d.sync += [v1.eq(issue), first1.eq(ej == 0), last1.eq(ej == R - 1), ch1.eq(ec)]
        for n in range(Q):
            taps = [kernel[st * Q + n] if st * Q + n < K else Const(0, signed(KERNEL_BITS))
                    for st in range(R)]
            m.d.sync += [k1[n].eq(Array(taps)[ej] if R > 1 else taps[0]),
                         p1[n].eq(Array(p_ext)[ec + off + n] if len(p_ext) > 1 else p_ext[0])]
        # Stage 2: the products (DSP blocks with their output registers).
        v2, first2, last2 = Signal(), Signal(), Signal()
        ch2 = Signal(ch_bits)
        prod2 = [Signal(signed(KERNEL_BITS + self.act_bits + 1), name=f"prod2_{n}")
                 for n in range(Q)]
        m.d.sync += [v2.eq(v1), first2.eq(first1), last2.eq(last1), ch2.eq(ch1)]
        m.d.sync += [prod2[n].eq(k1[n] * p1[n]) for n in range(Q)]
        # Stage 3: accumulate; the first tap starts from the bias. z goes to the requant
        # unit when its last tap is in (zv3).
        with m.If(v2):
            m.d.sync += zacc.eq(sum(prod2[1:], Mux(first2, bias, zacc) + prod2[0]))
        m.d.sync += [zv3.eq(v2 & last2), ch3.eq(ch2)]

        # ------------------------------------------------------------- output side
        # The output's own copy of a, in beat layout (padding lanes 0, don't-care).
        cur_a = [[Signal(A_BITS, name=f"cur_a{b}_{l}") for l in range(P)] for b in range(NB)]
        cur_valid = Signal()
        obeat = position_counter(NB, "obeat")
        opixel = position_counter(pixels, "opixel")
        o_last = (obeat == NB - 1) & (opixel == pixels - 1)
        advance = ~self.o.valid | self.o.ready
        ftake = cur_valid & img.r_rdy & advance
        m.d.comb += img.r_en.eq(ftake)
        step_counter(m, obeat, NB, ftake)
        step_counter(m, opixel, pixels, ftake & (obeat == NB - 1))
        # Copy when complete and the output has no image or is taking its final beat.
        m.d.comb += copy.eq(a_full & (~cur_valid | (ftake & o_last)))
        with m.If(copy):
            m.d.sync += cur_valid.eq(1)
            for b in range(NB):
                for l in range(P):
                    if b * P + l < C:
                        m.d.sync += cur_a[b][l].eq(a_bank[b * P + l])
        with m.Elif(ftake & o_last):
            m.d.sync += cur_valid.eq(0)

        x_in = data.View(data.ArrayLayout(unsigned(self.bits), P), img.r_data)
        rows = [Signal(A_BITS * P, name=f"cur_row{b}") for b in range(NB)]
        for b in range(NB):
            m.d.comb += rows[b].eq(Cat(*cur_a[b]))
        row = Signal(A_BITS * P)
        m.d.comb += row.eq(Array(rows)[obeat] if NB > 1 else rows[0])
        with m.If(ftake):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.last.eq(o_last)]
            for l in range(P):
                scaled = x_in[l] * row[A_BITS * l:A_BITS * (l + 1)]
                m.d.sync += self.o.payload.data[l].eq((scaled + 128) >> 8)
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
