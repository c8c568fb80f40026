"""GlobalAvgPool: per-channel sum over the whole feature map, then one requant (DESIGN.md §1).

Like the golden ``gap``, this is a *sum* pool: the 1/(H·W) of an average is folded into the
layer's single ``(m, sh)`` pair, so the hardware needs no divider.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .params import ParamKind, param_bus_signature, param_write_stage
from .requant import M_BITS, SH_BITS, Requant
from .resources import Cost, Multiplier, fifo_memories
from .stream import beats_per_pixel, pixel_stream, require_int

__all__ = ["GlobalAvgPool"]


class GlobalAvgPool(wiring.Component):
    """Sum every channel over an H×W image and requantize it with one ``(m, sh)``.

    Dataflow. One input beat is accepted per cycle; beat ``b`` of a pixel adds its lanes to
    the ``b``-th row of running sums (registers, ``NB = ceil(channels / lanes)`` rows of
    ``lanes`` sums, rotated by one row per beat so that the current row is always the
    first). Each beat of an image's last pixel writes 0 back instead of its completed sum
    (which goes on to the Requant), so the next image's first pixel adds to zero: no
    clearing cycle is needed, images follow each other with no gap, and no first-pixel
    select sits in front of the adders (the sums are also reset to 0, so the first image
    after a reset starts from zero even if the reset cut an image short). At full rate the
    per-image cost is exactly ``H · W · NB`` input cycles (overhead 0); the image's last
    output beat is on ``o`` :attr:`latency` cycles after its last input beat.

    Requant. The completed sums of the image's last pixel are requantized with the single
    ``(m, sh)`` (the same pair on every Requant lane) and go to an output FIFO:

    * Direct (``rq_groups = 1``: ``H · W = 1``, where every pixel is the last, or when sharing
      would not save a lane): one Requant lane per stream lane, each completed beat of the
      last pixel goes straight in (:attr:`latency` = 11, with the pipelined Requant of
      :mod:`hw.requant`).
    * Shared (otherwise): the last pixel's sums are copied to a hold bank and drained through
      ``rq_lanes = ceil(lanes / (H·W - 1))`` lanes, ``rq_groups`` cycles per beat, and
      gathered back into beats. The drain (``NB · rq_groups <= NB · (H·W - 1)`` cycles) ends
      before the next image's last pixel arrives, so it costs no input cycles, only latency
      (``NB · rq_groups + 11``). A Requant lane is a multiplier (DSP block) and a wide barrel
      shifter, so for the usual ``H · W >= lanes + 1`` a single lane serves every channel.

    Backpressure. Only the last pixel's sums produce output, and FIFO credit is checked
    before each output beat is started (``pending`` counts beats started and not yet taken
    from ``o``), so a stalled ``o`` only pauses the work. In the direct variant the last
    pixel's beats wait for credit; in the shared one the drain does, and the next image's
    last pixel waits until the hold bank is drained. ``i.ready`` is itself a register (its
    next value computed from the next state), so the accept strobe that enables every
    running-sum flip-flop is one gate from registers (timing: a 100 MHz ECP5 clock).

    Widths. A sum of ``H·W`` values below ``2**in_bits`` is at most
    ``(2**in_bits - 1) · H·W < 2**(in_bits + ceil(log2(H·W)))``, so each running sum is
    ``in_bits + ceil(log2(H·W))`` bits, unsigned and exact; Requant is exact for any
    accumulator width.

    Framing. Position comes from counting beats against the elaboration-time shape; the input
    ``last`` flag is not needed and is ignored. Padding lanes (channel >= ``channels``) are
    summed like the others; lanes never mix, so they only reach the padding lanes of the
    output, which carry don't-care values.

    Parameters
    ----------
    width, height : int
        Feature-map size (W, H).
    channels : int
        Channels C.
    lanes : int
        Lanes P of both streams.
    in_bits : int
        Width of the unsigned input activations.
    act_bits : int
        Width of the unsigned outputs (after the clamp).
    layer_id : int
        Layer index compared with ``params.payload.layer`` (kinds M and SH, row 0, lane 0).

    Attributes
    ----------
    i : In(pixel_stream(lanes, in_bits))
        ``H·W`` pixels of ``NB`` beats per image, raster order.
    o : Out(pixel_stream(lanes, act_bits))
        One pixel of ``NB`` beats per image.
    params : In(param_bus_signature())
        Parameter writes; ``ready`` is always 1.
    nb : int
        Beats per pixel.
    sum_bits : int
        Width of a running sum.
    latency : int
        Cycles from accepting an image's last input beat to its last output beat on ``o``
        (no stalls).
    rq_lanes, rq_groups : int
        Requant lanes and the cycles one output beat spends in them (see above).
    fifo_depth : int
        Output FIFO entries (the credit).

    Raises
    ------
    ValueError
        A size or width is not a positive integer in range, or ``layer_id`` does not fit the
        8-bit layer field.
    """

    def __init__(self, *, width, height, channels, lanes, in_bits, act_bits, layer_id=0):
        for name, value in (("width", width), ("height", height), ("channels", channels),
                            ("lanes", lanes)):
            require_int("GlobalAvgPool", name, value, 1)
        require_int("GlobalAvgPool", "in_bits", in_bits, 1, 16)
        require_int("GlobalAvgPool", "act_bits", act_bits, 1, 16)
        require_int("GlobalAvgPool", "layer_id", layer_id, 0, 255)
        self.width, self.height, self.channels, self.lanes = width, height, channels, lanes
        self.in_bits, self.act_bits, self.layer_id = in_bits, act_bits, layer_id
        self.nb = beats_per_pixel(channels, lanes)
        self.sum_bits = in_bits + ceil_log2(width * height)
        if self.sum_bits + 1 > 64:
            raise ValueError(f"a {width}x{height} map of {in_bits}-bit values needs "
                             f"{self.sum_bits}-bit sums, more than supported")
        geo = self.geometry(width=width, height=height, channels=channels, lanes=lanes)
        self.rq_lanes, self.rq_groups = geo["rq_lanes"], geo["rq_groups"]
        self.latency, self.fifo_depth = geo["latency"], geo["fifo_depth"]
        self._cost_args = dict(width=width, height=height, channels=channels, lanes=lanes,
                               in_bits=in_bits, act_bits=act_bits)
        super().__init__({
            "i": In(pixel_stream(lanes, in_bits)),
            "o": Out(pixel_stream(lanes, act_bits)),
            "params": In(param_bus_signature()),
        })

    @staticmethod
    def geometry(*, width, height, channels, lanes):
        """Requant sharing, latency and FIFO depth (a dict); used by the constructor and
        :meth:`cost`, so the planner counts what the RTL builds."""
        nb = beats_per_pixel(channels, lanes)
        pixels = width * height
        # Requant lanes. With a 1×1 map every beat is a last-pixel beat: one Requant lane per
        # stream lane. Otherwise the image's last pixel is copied into a hold bank and drained
        # through rq_lanes = ceil(lanes / (H·W - 1)) lanes, rq_groups = ceil(lanes / rq_lanes)
        # cycles per beat: NB · rq_groups <= NB · (H·W - 1) cycles, i.e. done before the next
        # image's last pixel arrives, so sharing never slows the input. A Requant lane is a
        # multiplier (a DSP block) and a wide barrel shifter, so this saves area.
        rq_lanes = lanes if pixels == 1 else -(-lanes // (pixels - 1))
        rq_groups = -(-lanes // rq_lanes)
        # (The pipelined Requant: its product and shift split over stages, see hw.requant.)
        rq_latency = Requant.LATENCY_PIPELINED
        if rq_groups == 1:
            # Requant input register (1) + Requant + FIFO write (1) + FIFO output register (1).
            latency = rq_latency + 3
        else:
            # Drain of NB · groups cycles (after the last beat is held) + Requant + gather
            # register + FIFO write + FIFO output register.
            latency = nb * rq_groups + rq_latency + 3
        return dict(nb=nb, rq_lanes=rq_lanes, rq_groups=rq_groups, latency=latency,
                    fifo_depth=rq_latency + 3 + 2)

    @classmethod
    def cost(cls, *, width, height, channels, lanes, in_bits, act_bits, layer_id=0):
        """Resources as built (see :mod:`hw.resources`): ``rq_lanes`` Requant multipliers
        (signed ``sum_bits + 1`` × unsigned 16-bit ``m``), the output FIFO, and
        ``H · W · NB`` cycles per image (one input beat per cycle, no per-image overhead)."""
        g = cls.geometry(width=width, height=height, channels=channels, lanes=lanes)
        sum_bits = in_bits + ceil_log2(width * height)
        return Cost(
            cycles=width * height * g["nb"],
            multipliers=[Multiplier.amaranth("requant", g["rq_lanes"], sum_bits + 1, True,
                                             M_BITS, False)],
            memories=fifo_memories("fifo", lanes * act_bits + 1, g["fifo_depth"]))

    def resources(self):
        """:meth:`cost` of this instance."""
        return self.cost(**self._cost_args)

    def elaborate(self, platform):
        m = Module()
        lanes, nb = self.lanes, self.nb
        pixels = self.width * self.height
        sum_layout = data.ArrayLayout(unsigned(self.sum_bits), lanes)

        # ------------------------------------------------------------- (m, sh) registers
        # Two-stage decode (hw.params.param_write_stage): the ~50-input compare of a beat
        # (valid, layer, kind, row 0, lane 0) ends in two registered hit bits beside the
        # payload register, so each constant's clock enable is a flip-flop (the one-stage
        # decode into these enables, across the die, was once the 85F digits design's
        # critical path: 11.9 ns, 9.7 ns of it routing). One more cycle of parameter latency,
        # nothing per image.
        st1 = param_write_stage(m, self.params, self.layer_id,
                                {"m": (ParamKind.M, 1, 1), "sh": (ParamKind.SH, 1, 1)},
                                name="par")
        mult = Signal(M_BITS)
        shift = Signal(SH_BITS)
        with m.If(st1.hit["m"]):
            m.d.sync += mult.eq(st1.data)
        with m.If(st1.hit["sh"]):
            m.d.sync += shift.eq(st1.data)

        # ------------------------------------------------------------- running sums
        # At least 1 bit each: a zero-width counter (nb or H·W of 1) would reach the Verilog
        # as an undriven, unused net.
        beat = Signal(range(max(nb, 2)))
        pixel = Signal(range(max(pixels, 2)))
        # "This beat belongs to the image's last pixel": a register kept equal, cycle for
        # cycle, to pixel == pixels - 1 (it takes last_next below), so the zeroing of the
        # running sums and the hold-bank write enable start at a flip-flop, not at a compare
        # of the pixel counter.
        if pixels == 1:
            last_pixel = Const(1, 1)
        else:
            last_pixel = Signal(name="last_q")
        pending = Signal(range(self.fifo_depth + 1))
        # i.ready is a register: each variant computes next cycle's value from the next
        # state (same value, cycle for cycle, as the combinational form), so the beat-accept
        # strobe that clock-enables every running-sum flip-flop is one AND of two registers
        # (i.valid comes from the upstream FIFO's output register) instead of a compare and
        # credit chain fanned out to hundreds of enables.
        ready = Signal(init=1, name="ready_q")
        m.d.comb += self.i.ready.eq(ready)
        take = self.i.valid & ready
        # Whether the *next* cycle's beat belongs to the image's last pixel.
        if pixels == 1:
            last_next = Const(1, 1)
        else:
            last_next = Mux(take & (beat == nb - 1), pixel == pixels - 2, last_pixel)

            m.d.sync += last_pixel.eq(last_next)
        # "This beat is beat b of the image's last pixel", one register per beat, also kept
        # equal cycle for cycle to last_pixel & (beat == b) (computed from the next state):
        # the hold-bank write enables and the drain start are then one AND of registers
        # (take & lb[b]) instead of a compare of the beat counter after the take strobe.
        # That chain (rs9_r valid -> take -> beat/last compare -> the hold CE net spread over
        # the bank -> drain counters -> step_q, 11.15 ns) was the 85F digits critical path
        # of a seed once the first-pixel select was gone. Separate flip-flops from last_q, so
        # these few control loads do not share last_q's net to the hundreds of sum bits.
        beat_next = Mux(take, Mux(beat == nb - 1, 0, beat + 1), beat)
        lb = [Signal(init=int(b == 0 and pixels == 1), name=f"lastbeat{b}_q")
              for b in range(nb)]
        for b in range(nb):
            m.d.sync += lb[b].eq(last_next & (beat_next == b))

        # The rows of running sums rotate by one on every accepted beat, so the row of the
        # current beat is always sums[0] (after NB beats, a whole pixel, they are back in
        # order): no NB-way row mux selected by the beat counter in front of every adder
        # (its fan-out was the block's critical path once the first-pixel flag was a
        # register: 90.9 MHz), and no write decode.
        # The next image restarts from 0 because the last pixel's beats write 0 back (the
        # completed sums leave through `new` to the Requant side). A "first pixel" select of
        # 0 or the sum in front of every adder instead (lanes × sum_bits loads of one flag)
        # was the 85F digits design's critical path, 10.05 ns with ~4 ns of it the flag's
        # fan-out: now the adder is sum register → carry chain, and the zeroing is one gate
        # after the carry chain of the written row only (select last_q, a register), where
        # the sum would go through to its flip-flop anyway; the path to the hold bank has no
        # select at all. The sums are reset with the domain (on ECP5 the global reset goes
        # to the flip-flops' LSR pin), so a reset in the middle of an image (the board's
        # reset follows the PLL lock) cannot leave a partial sum for the first image after
        # it.
        sums = [Signal(sum_layout, name=f"sum{b}") for b in range(nb)]
        cur = sums[0]
        new = Signal(sum_layout)
        for k in range(lanes):
            # Lanes never mix, so a padding lane's garbage only reaches that padding lane's
            # output (don't-care by the stream convention): no input mask is needed.
            m.d.comb += new[k].eq(cur[k] + self.i.payload.data[k])

        with m.If(take):
            m.d.sync += [a.eq(b) for a, b in zip(sums, sums[1:])]
            m.d.sync += sums[-1].eq(Mux(last_pixel, 0, new))
            with m.If(beat == nb - 1):
                m.d.sync += beat.eq(0)
                m.d.sync += pixel.eq(Mux(last_pixel, 0, pixel + 1))
            with m.Else():
                m.d.sync += beat.eq(beat + 1)

        out_layout = self.o.payload.shape()
        m.submodules.fifo = ofifo = fifo.SyncFIFOBuffered(width=out_layout.size,
                                                          depth=self.fifo_depth)
        # The FIFO's read stream is the output (its payload is the same bits, unstructured).
        wiring.connect(m, ofifo.r_stream, wiring.flipped(self.o))
        out_taken = self.o.valid & self.o.ready
        if self.rq_groups == 1:
            self._direct_requant(m, take, last_pixel, beat, new, mult, shift, pending, ofifo,
                                 out_taken, ready, last_next)
        else:
            self._shared_requant(m, take, lb, new, mult, shift, pending, ofifo,
                                 out_taken, ready, last_next)
        return m

    def _direct_requant(self, m, take, last_pixel, beat, new, mult, shift, pending, ofifo,
                        out_taken, ready, last_next):
        """One Requant lane per stream lane, fed straight from the last pixel's sums."""
        lanes, nb = self.lanes, self.nb
        # Only beats of the last pixel produce output, so only they need FIFO credit:
        # ready = ~last_pixel | (pending < depth), registered from the next state.
        pending_next = Signal.like(pending)
        m.d.comb += pending_next.eq(pending + (take & last_pixel) - out_taken)
        m.d.sync += [pending.eq(pending_next),
                     ready.eq(~last_next | (pending_next < self.fifo_depth))]
        rq_valid = Signal()
        rq_sum = Signal.like(new, reset_less=True)
        rq_last = Signal()
        m.d.sync += rq_valid.eq(take & last_pixel)
        with m.If(take):
            m.d.sync += [rq_sum.eq(new), rq_last.eq(beat == nb - 1)]
        m.submodules.requant = rq = Requant(lanes=lanes, act_bits=self.act_bits,
                                            acc_bits=self.sum_bits + 1, pipelined=True)
        m.d.comb += [rq.i.valid.eq(rq_valid), rq.i.payload.tag.eq(rq_last)]
        for k in range(lanes):
            m.d.comb += [rq.i.payload.acc[k].eq(rq_sum[k]),
                         rq.i.payload.m[k].eq(mult), rq.i.payload.sh[k].eq(shift)]
        beat_out = Signal(self.o.payload.shape())
        m.d.comb += [beat_out.data.eq(rq.o.payload.q), beat_out.last.eq(rq.o.payload.tag),
                     ofifo.w_data.eq(beat_out), ofifo.w_en.eq(rq.o.valid)]

    def _shared_requant(self, m, take, lb, new, mult, shift, pending, ofifo,
                        out_taken, ready, last_next):
        """The last pixel's sums go to a hold bank, drained through ``rq_lanes`` lanes."""
        lanes, nb = self.lanes, self.nb
        r, groups = self.rq_lanes, self.rq_groups
        grp_bits = max(1, (groups - 1).bit_length())
        # The hold bank as nb · groups slots of r sums, in issue order (slot b · groups + g is
        # group g of held beat b). It drains as a shift register: each drain step moves every
        # slot down by one, so the feed register always takes slot 0. A 24-way select of the
        # held sums driven by the drain counters (routed across the bank) was the 85F digits
        # design's critical path (10.56 ns, 9.07 ns of it routing); now each slot flip-flop
        # sees a 2-way choice (its write data or its neighbour) and the feed a fixed wire.
        slots = nb * groups
        hold = [Signal(data.ArrayLayout(unsigned(self.sum_bits), r), name=f"hold{s}",
                       reset_less=True) for s in range(slots)]
        draining = Signal()
        # The hold bank is free again once drained; the next last pixel waits for that (it
        # only has to under backpressure: at full rate the drain ends first, see __init__):
        # ready = ~last_pixel | ~draining, registered from the next state.
        draining_next = Signal()
        m.d.sync += [draining.eq(draining_next), ready.eq(~last_next | ~draining_next)]
        d_beat = Signal(range(max(nb, 2)))
        d_grp = Signal(range(max(groups, 2)))
        # Credit: one FIFO entry is reserved when a beat's first group is issued. A drain step
        # clock-enables every hold-bank flip-flop (nb · lanes sums), so, like ready_q, it is a
        # register computed from the next state (same value, cycle for cycle, as
        # draining & ((d_grp != 0) | (pending < depth))): that fan-out starts at a flip-flop,
        # not after the credit compare.
        step = Signal(name="step_q")
        d_grp_next = Signal.like(d_grp)
        pending_next = Signal.like(pending)
        # Writes (beat b of the last pixel fills slots b · groups ...) and drain shifts never
        # meet in one cycle: a last-pixel beat is only taken while not draining (ready), and
        # the drain starts on the cycle after the last write, so the next image's last pixel
        # finds the bank fully drained. Lanes past the beat (g · r + k >= lanes) hold 0:
        # don't-care, never gathered. Each slot's data select is the step register (shift
        # if stepping, else the write data) and its clock enable step | write: the write
        # enable (take & lastbeat_q) then only drives a few enable gates, not the select of
        # every held bit, so the same term for the drain control below stays a small local
        # net (a seed's 85F critical path went through that bank-wide net, 11.15 ns).
        last_in = take & lb[nb - 1]             # the image's last input beat is taken
        for b in range(nb):
            for g in range(groups):
                s = b * groups + g
                write = [new[g * r + k] if g * r + k < lanes else 0 for k in range(r)]
                if s + 1 < slots:
                    with m.If(step | (take & lb[b])):
                        m.d.sync += [hold[s][k].eq(Mux(step, hold[s + 1][k], write[k]))
                                     for k in range(r)]
                else:
                    # The top slot keeps its value on a shift (don't-care once drained).
                    with m.If(take & lb[b]):
                        m.d.sync += [hold[s][k].eq(write[k]) for k in range(r)]
        with m.If(last_in):
            m.d.sync += d_beat.eq(0)
        # (Start and end of a drain never coincide: a last-pixel beat is only taken while
        # not draining.)
        m.d.comb += draining_next.eq(draining)
        with m.If(last_in):
            m.d.comb += draining_next.eq(1)

        m.d.comb += [pending_next.eq(pending + (step & (d_grp == 0)) - out_taken),
                     d_grp_next.eq(d_grp)]
        with m.If(last_in):
            m.d.comb += d_grp_next.eq(0)
        with m.If(step):
            with m.If(d_grp == groups - 1):
                m.d.comb += d_grp_next.eq(0)
                with m.If(d_beat == nb - 1):
                    m.d.comb += draining_next.eq(0)
                with m.Else():
                    m.d.sync += d_beat.eq(d_beat + 1)
            with m.Else():
                m.d.comb += d_grp_next.eq(d_grp + 1)
        m.d.sync += [pending.eq(pending_next), d_grp.eq(d_grp_next),
                     step.eq(draining_next & ((d_grp_next != 0)
                                              | (pending_next < self.fifo_depth)))]

        # Feed register: slot 0, the group being issued (registered: the Requant's input
        # stays one register from the bank). The counters only make the tag and end the drain.
        m.submodules.requant = rq = Requant(lanes=r, act_bits=self.act_bits,
                                            acc_bits=self.sum_bits + 1, tag_bits=grp_bits + 1,
                                            pipelined=True)
        f_valid = Signal()
        f_tag = Signal(grp_bits + 1)
        f_acc = [Signal(self.sum_bits, name=f"feed{k}", reset_less=True) for k in range(r)]
        m.d.sync += [f_valid.eq(step), f_tag.eq(Cat(d_grp[:grp_bits], d_beat == nb - 1))]
        for k in range(r):
            m.d.sync += f_acc[k].eq(hold[0][k])
        m.d.comb += [rq.i.valid.eq(f_valid), rq.i.payload.tag.eq(f_tag)]
        for k in range(r):
            m.d.comb += [rq.i.payload.acc[k].eq(f_acc[k]),
                         rq.i.payload.m[k].eq(mult), rq.i.payload.sh[k].eq(shift)]

        # Gather the groups into one output beat; write it once its last group is in.
        gather = Signal(self.o.payload.shape(), reset_less=True)
        q_grp = rq.o.payload.tag[:grp_bits]
        with m.If(rq.o.valid):
            with m.Switch(q_grp):
                for g in range(groups):
                    with m.Case(g):
                        for k in range(r):
                            if g * r + k < lanes:
                                m.d.sync += gather.data[g * r + k].eq(rq.o.payload.q[k])
            m.d.sync += gather.last.eq(rq.o.payload.tag[grp_bits])
        done = Signal()
        m.d.sync += done.eq(rq.o.valid & (q_grp == groups - 1))
        m.d.comb += [ofifo.w_data.eq(gather), ofifo.w_en.eq(done)]
