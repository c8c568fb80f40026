"""ShiftUnit: the per-channel spatial shift of DESIGN.md §1 on a pixel stream.

``out[y, x, c] = in[y + dy[c], x + dx[c], c]`` when that pixel is inside the image, else 0,
with ``|dy|, |dx| <= R``. The shifts are run-time data (parameter stream, kind ``SHIFT``); the
feature-map shape and ``R`` are elaboration parameters.

Architecture
------------
A ring of ``NR`` rows (the smallest power of two > ``2R + 1``, see :func:`ring_rows`) of the input feature map is
kept on chip, **banked by lane**: lane ``l`` has its own memory holding channel ``b*P + l``
of every buffered pixel, at address ``(slot * W + x) * NB + b``. Every cycle each lane reads
its own channel at its own ``(dy, dx)`` from its own bank, so one output beat leaves per cycle
while one input beat is written per cycle.

No multiplier. The block is zero-FLOP and must not spend a DSP block on addressing: the
address of the beat being read, ``(rslot * W + rx) * NB + rb``, advances by one per beat, so
it is a wrapping counter (``centre``); a lane's address is ``centre + dy * W * NB + dx * NB``
modulo the ring, where the two products of a run-time shift in ``[-R, R]`` by a constant
stride are ``2R + 1``-entry constant tables, looked up and summed once when the shift is
written (a register per channel holds the offset), and the modulo is one conditional add or
subtract (the offset is smaller than the ring), formed as three parallel sums. The pacing
threshold ``dyr * W * NB + dxr * NB`` is a constant table too.

Global rows (counted across back-to-back images) map to ``slot = row mod NR``, so the write
address is a plain wrapping counter and the next image is written while the previous one is
still being read: no drain gap between images.

Two up/down counters pace the two sides:

* ``lead`` = beats written − beats read. Beat ``b`` of output pixel ``(y, x)`` may be read once
  beat ``b`` of input pixel ``(min(y+R, H-1), min(x+R, W-1))`` is written, i.e. when
  ``lead > (min(R, H-1-y) * W + min(R, W-1-x)) * NB``. ``lead`` counts writes committed at
  earlier clock edges, so a read never races the write of the data it needs (the read ports
  need no transparency).
* ``rowlead`` = row being written − row being read. A write into row ``r`` overwrites row
  ``r - NR``; rows ``>= y - R`` are still needed, so writes are allowed while
  ``rowlead <= NR - R - 1``. With ``NR >= 2R + 2`` both sides run every cycle in steady state.

The read pipeline is issue (counters) → shift select → address and mask → memory read
(synchronous port) → output register, every stage on one enable (the output register is
free), so a stalled output holds all of them; each cut is there for timing (a 100 MHz ECP5
clock). The read side gives a row up (``rowlead``) only when the beat ending it is read from
memory, not when it is issued, so beats in the pipeline never see their rows overwritten.

``stride=2`` keeps only output pixels with even y and even x (a ``ceil(H/2) × ceil(W/2)``
map for a following stride-2 conv): the read side skips the other beats at one beat per cycle
without reading, so the input is still consumed at one beat per cycle.
"""

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .params import SHIFT_DATA, ParamKind, param_bus_signature, param_write_stage
from .resources import Cost, MemorySpec
from .stream import beats_per_pixel, pixel_stream, require_int, require_positive

__all__ = ["ShiftUnit", "ring_rows", "position_counter", "step_counter"]


def position_counter(n, name):
    """A position counter over ``[0, n)``: a Signal, or the constant 0 when ``n == 1``.

    (A one-value counter would be a zero-width signal, which the emitted Verilog declares as
    ``[-1:0]``; the constant keeps every comparison on it valid and emits nothing.)
    """
    return Signal(range(n), name=name) if n > 1 else Const(0, 1)


def step_counter(m, counter, n, inc):
    """Advance ``counter`` (from :func:`position_counter`) modulo ``n`` when ``inc`` is high."""
    if n > 1:
        with m.If(inc):
            m.d.sync += counter.eq(Mux(counter == n - 1, 0, counter + 1))


def ring_rows(radius, width=None, nb=1):
    """Rows of the line-buffer ring: the smallest power of two greater than ``2R + 1``.

    The read side gives a row up two cycles after issuing the beat that ends it (when that
    beat is read from memory, see :class:`ShiftUnit`). In a narrow map, where fewer than 3
    beats separate the reader's last need of a row from the writer's first need of its slot
    (``(W - R) · NB < 3``), and with no spare row in the ring (``NR == 2R + 2``), those two
    cycles would stall the writer every row, so such a map gets twice the rows (a few words
    more; tests/test_shift_unit.py measures the cycle model of narrow maps).
    """
    rows = 1 << (2 * radius + 1).bit_length()
    if width is not None and (width - radius) * nb < 3 and rows < 2 * radius + 3:
        rows *= 2
    return rows


def _const_table(m, sel, table, shape, name):
    """Combinational ``table[v]`` for the value ``v`` of ``sel`` (a small constant ROM in LUTs).

    ``table`` maps every value ``sel`` can take to a constant; the last entry is the default
    case so the decoder is complete. This is how a run-time shift in ``[-R, R]`` is scaled by a
    constant stride without a multiplier (Yosys maps a ``$mul`` by a constant to a DSP block).
    """
    out = Signal(shape, name=name)
    items = list(table.items())
    if len(items) == 1:
        m.d.comb += out.eq(items[0][1])
        return out
    with m.Switch(sel):
        for v, c in items[:-1]:
            with m.Case(v):
                m.d.comb += out.eq(c)
        with m.Default():
            m.d.comb += out.eq(items[-1][1])
    return out


def _min_to_end(m, pos, n, radius, name):
    """Combinational ``min(radius, n - 1 - pos)`` for a position counter ``pos`` in ``[0, n)``."""
    out = Signal(range(radius + 1), name=name)
    m.d.comb += out.eq(radius)
    for k in range(min(radius, n)):
        with m.If(pos == n - 1 - k):
            m.d.comb += out.eq(k)
    return out


class ShiftUnit(wiring.Component):
    """Per-channel spatial shift with zero padding, one beat in and one beat out per cycle.

    Parameters
    ----------
    width, height : int
        Feature-map shape W, H (elaboration parameters: the counters and the line buffer are
        sized for them).
    channels : int
        Channel count C; a pixel is ``NB = ceil(C / lanes)`` beats.
    lanes : int
        Lanes per beat P.
    bits : int
        Activation width.
    radius : int
        Largest ``|dy|``, ``|dx|`` the hardware supports (R). Loaded shifts must respect it
        (larger values wrap in the ``R``-sized registers).
    stride : int
        1, or 2 to emit only pixels with even y and even x.
    layer_id : int
        Layer index this block answers to on the parameter stream.

    Attributes
    ----------
    i : In(pixel_stream(lanes, bits))
        Input feature map, raster order; ``last`` is not used (the block counts beats).
    o : Out(pixel_stream(lanes, bits))
        Shifted feature map (``ceil(H/s) × ceil(W/s)`` pixels); ``last`` on the final beat of
        each image; padding lanes are 0.
    params : In(param_bus_signature())
        Parameter beats; kind ``SHIFT``, row ``c // lanes``, lane ``c % lanes``,
        data ``(dy & 0xFF) | (dx & 0xFF) << 8``. Always ready.
    rows : int
        Rows in the line-buffer ring (NR).
    depth : int
        Words per lane bank (``NR * W * NB``).
        (``NR`` is :func:`ring_rows` of ``R`` and ``W * NB``.)

    Raises
    ------
    ValueError
        A shape, lane count, width, radius, stride or layer id out of range.
    """

    def __init__(self, *, width, height, channels, lanes, bits, radius=1, stride=1, layer_id=0):
        require_positive("ShiftUnit", width=width, height=height, channels=channels,
                         lanes=lanes, bits=bits, radius=radius)
        # The shift fields of a parameter beat are 8 bits each.
        require_int("ShiftUnit", "radius", radius, 1, 127)
        require_int("ShiftUnit", "stride", stride, 1, 2)
        require_int("ShiftUnit", "layer_id", layer_id, 0, 255)
        self.width, self.height, self.channels = width, height, channels
        self.lanes, self.bits, self.radius, self.stride = lanes, bits, radius, stride
        self.layer_id = layer_id
        self.nb = beats_per_pixel(channels, lanes)
        self.rows = ring_rows(radius, width, self.nb)
        self.depth = self.rows * width * self.nb
        super().__init__({
            "i": In(pixel_stream(lanes, bits)),
            "o": Out(pixel_stream(lanes, bits)),
            "params": In(param_bus_signature()),
        })

    @staticmethod
    def cost(*, width, height, channels, lanes, bits, radius=1, stride=1, layer_id=0):
        """Resources as built (see :mod:`hw.resources`): no multiplier; ``lanes`` line-buffer
        banks of ``ring_rows(radius, width, NB) * width * NB`` words of ``bits``; ``H · W · NB`` cycles
        per image (one input beat per cycle; a stride-2 output skips beats without cycles)."""
        nb = beats_per_pixel(channels, lanes)
        depth = ring_rows(radius, width, nb) * width * nb
        return Cost(cycles=height * width * nb,
                    memories=[MemorySpec(f"bank{l}", depth, bits) for l in range(lanes)])

    def resources(self):
        """:meth:`cost` of this instance."""
        return self.cost(width=self.width, height=self.height, channels=self.channels,
                         lanes=self.lanes, bits=self.bits, radius=self.radius,
                         stride=self.stride)

    def elaborate(self, platform):
        m = Module()
        W, H, C, P = self.width, self.height, self.channels, self.lanes
        R, NB, NR, S = self.radius, self.nb, self.rows, self.stride
        WNB = W * NB

        # ---- shift registers, written from the parameter stream --------------------------
        # Registers rather than a memory: every lane needs its own (dy, dx) for the current
        # beat in the same cycle as the address computation.
        sshape = signed(R.bit_length() + 1)
        # (Only real channels get registers; padding lanes of the last beat are masked.)
        dys = [[Signal(sshape, name=f"dy_{b}_{l}") for l in range(min(P, C - b * P))]
               for b in range(NB)]
        dxs = [[Signal(sshape, name=f"dx_{b}_{l}") for l in range(min(P, C - b * P))]
               for b in range(NB)]
        # Two-stage decode (hw.params.param_write_stage): stage 1 registers the beat's wide
        # compare (valid, layer, kind SHIFT, row < NB, lane < P) as one hit bit beside the
        # row/lane/data registers; stage 2 below forms each channel's enable from that bit
        # and the few registered row/lane bits, and the offset from the registered data.
        # One more cycle of parameter latency, nothing per image.
        st1 = param_write_stage(m, self.params, self.layer_id,
                                {"shift": (ParamKind.SHIFT, NB, P)}, name="par")
        hit = st1.hit["shift"]
        shift_data = SHIFT_DATA(st1.data[:SHIFT_DATA.size])
        # Each channel's address offset dy * W * NB + dx * NB, formed once when its shift is
        # written (one pair of constant tables and one adder for the block, on the parameter
        # path) and kept in a register beside the shift: the read pipeline then adds only
        # this register to the centre (see stage A below). The tables run over the truncated
        # register values, so the offset is exactly that of the (dy, dx) kept.
        off_bits = (2 * self.depth).bit_length() + 1
        oshape = signed(off_bits)
        svals = range(-(1 << (sshape.width - 1)), 1 << (sshape.width - 1))
        w_dy = Signal(sshape, name="w_dy")
        w_dx = Signal(sshape, name="w_dx")
        m.d.comb += [w_dy.eq(shift_data.dy), w_dx.eq(shift_data.dx)]
        w_off = Signal(oshape, name="w_off")
        m.d.comb += w_off.eq(_const_table(m, w_dy, {v: v * WNB for v in svals}, oshape, "w_off_y")
                             + _const_table(m, w_dx, {v: v * NB for v in svals}, oshape,
                                            "w_off_x"))
        offs = [[Signal(oshape, name=f"off_{b}_{l}", reset_less=True)
                 for l in range(min(P, C - b * P))] for b in range(NB)]
        for b in range(NB):
            for l in range(min(P, C - b * P)):
                with m.If(hit & (st1.row == b) & (st1.lane == l)):
                    # Truncating the signed bytes to the R-sized registers is intended.
                    m.d.sync += [dys[b][l].eq(shift_data.dy), dxs[b][l].eq(shift_data.dx),
                                 offs[b][l].eq(w_off)]

        # ---- pacing counters ---------------------------------------------------------------
        span = (NR + 4) * WNB + 4
        lead = Signal(range(-span, span))            # beats written - beats read (global)
        rowlead = Signal(range(-4 - H, NR + 4))      # row written - row read (global)

        # ---- write side: a wrapping address over the NR-row ring ---------------------------
        banks = []
        for l in range(P):
            bank = Memory(shape=unsigned(self.bits), depth=self.depth, init=[])
            m.submodules[f"bank{l}"] = bank
            banks.append((bank.write_port(), bank.read_port()))
        # The write address counter is lane 0's write-port address register itself (the other
        # lanes share it), so no duplicate counter or alias wire exists.
        waddr = banks[0][0].addr
        wx = position_counter(W, "wx")
        wb = position_counter(NB, "wb")
        m.d.comb += self.i.ready.eq(rowlead <= NR - R - 1)
        i_fire = self.i.valid & self.i.ready
        w_row_end = (wx == W - 1) & (wb == NB - 1)
        step_counter(m, waddr, self.depth, i_fire)
        step_counter(m, wb, NB, i_fire)
        step_counter(m, wx, W, i_fire & (wb == NB - 1))

        # ---- read side counters (position of the beat being issued) ------------------------
        ry = position_counter(H, "ry")
        rx = position_counter(W, "rx")
        rb = position_counter(NB, "rb")

        # Global read position (rslot * W + rx) * NB + rb as one wrapping counter: the read
        # side advances through the ring one beat at a time (skipped stride-2 beats included),
        # so no row/column product is ever formed.
        centre = Signal(range(self.depth), name="centre")

        dyr = _min_to_end(m, ry, H, R, "dy_room")
        dxr = _min_to_end(m, rx, W, R, "dx_room")
        # Beats that must already be written ahead of this one (see module docstring):
        # dyr * WNB + dxr * NB, from two constant tables (no multiplier).
        need_bits = unsigned((R * (WNB + NB)).bit_length())
        need_y = _const_table(m, dyr, {k: k * WNB for k in range(R + 1)}, need_bits, "need_y")
        need_x = _const_table(m, dxr, {k: k * NB for k in range(R + 1)}, need_bits, "need_x")
        can_read = lead > need_y + need_x

        # ---- read pipeline ------------------------------------------------------------------
        # issue (counters) -> S (each lane's shift selected, position registered) -> A (each
        # lane's address and in-image mask) -> memory read -> C (output register). Every
        # stage advances on one enable, ``adv`` (the output register is free), so a stalled
        # output holds the whole pipeline and no beat is lost or duplicated. The cuts are for
        # timing: the shift select, the constant tables and the address adder with its
        # wrap-around were one combinational path into the line-buffer memory (a distributed
        # RAM read as well, for small banks), and the memory's output went straight to the
        # next block; each is now a stage of its own.
        vC = self.o.valid                            # output register holds a beat
        adv = ~vC | self.o.ready
        if S == 2:
            skip = ry[0] | rx[0]
            last_y, last_x = 2 * ((H - 1) // 2), 2 * ((W - 1) // 2)
        else:
            skip = Const(0, 1)
            last_y, last_x = H - 1, W - 1
        issue = ~skip & can_read & adv
        # A skipped beat (stride 2) also waits for adv: it carries the row-end token below
        # down the pipeline in order with the beats before it. (adv is high in steady state.)
        advance = (skip & adv) | issue
        r_row_end = (rx == W - 1) & (rb == NB - 1)

        step_counter(m, rb, NB, advance)
        step_counter(m, rx, W, advance & (rb == NB - 1))
        step_counter(m, ry, H, advance & r_row_end)
        step_counter(m, centre, self.depth, advance)

        # Stage S.
        vS, lastS, rowendS = Signal(), Signal(), Signal()
        centreS = Signal.like(centre, name="centre_s", reset_less=True)
        # The centre and the centre one ring below / above it, so that stage A forms the
        # three candidate addresses in parallel (one adder each) instead of an adder, a
        # compare and a subtract in a row.
        ashape = signed(off_bits + 2)
        centreSm = Signal(ashape, name="centre_s_m", reset_less=True)
        centreSp = Signal(ashape, name="centre_s_p", reset_less=True)
        ryS = Signal(range(max(H, 2)), name="ry_s", reset_less=True)
        rxS = Signal(range(max(W, 2)), name="rx_s", reset_less=True)
        lastlaneS = Signal(name="lastbeat_s", reset_less=True)
        with m.If(adv):
            m.d.sync += [vS.eq(issue), rowendS.eq(advance & r_row_end),
                         lastS.eq((ry == last_y) & (rx == last_x) & (rb == NB - 1)),
                         centreS.eq(centre), centreSm.eq(centre - self.depth),
                         centreSp.eq(centre + self.depth), ryS.eq(ry), rxS.eq(rx),
                         lastlaneS.eq(rb == NB - 1)]
        # Stage A.
        vA, lastA, rowendA = Signal(), Signal(), Signal()
        maskA = Signal(P, name="mask_a")
        with m.If(adv):
            m.d.sync += [vA.eq(vS), lastA.eq(lastS), rowendA.eq(rowendS)]
        # Stage B (the memory's own read register) and C (output register).
        vB, lastB = Signal(), Signal()
        maskB = Signal(P, name="mask_b")
        lastC = Signal()
        with m.If(adv):
            m.d.sync += [vB.eq(vA), lastB.eq(lastA), maskB.eq(maskA),
                         vC.eq(vB), lastC.eq(lastB)]

        # Writes into row r overwrite row r - NR: the read side gives a row up only once the
        # beat that ends it has left stage A (been read from memory), so a beat in the
        # pipeline never sees its row overwritten, however long the output stalls.
        m.d.sync += lead.eq(lead + i_fire - advance)
        m.d.sync += rowlead.eq(rowlead + (i_fire & w_row_end) - (adv & rowendA))

        # ---- per-lane banks ----------------------------------------------------------------
        last_valid_lanes = C - (NB - 1) * P
        for l in range(P):
            wp, rp = banks[l]
            m.d.comb += [wp.en.eq(i_fire), wp.data.eq(self.i.payload.data[l])]
            if l:
                m.d.comb += wp.addr.eq(waddr)

            # Stage S: this lane's shift and address offset for beat rb; the last beat is the
            # default case so the decoder is complete for every NB (no latch-like incomplete
            # case).
            dy = Signal(sshape, name=f"cur_dy{l}", reset_less=True)
            dx = Signal(sshape, name=f"cur_dx{l}", reset_less=True)
            offS = Signal(oshape, name=f"off_s{l}", reset_less=True)
            beats = [b for b in range(NB) if b * P + l < C]
            # (A lane past C in every beat keeps dy = dx = 0; it is masked anyway.)

            def pick(b):
                return [dy.eq(dys[b][l]), dx.eq(dxs[b][l]), offS.eq(offs[b][l])]
            with m.If(adv):
                if len(beats) == 1:
                    m.d.sync += pick(beats[0])
                elif beats:
                    with m.Switch(rb):
                        for b in beats[:-1]:
                            with m.Case(b):
                                m.d.sync += pick(b)
                        with m.Default():
                            m.d.sync += pick(beats[-1])

            # Stage S -> A: in-image mask and address.
            ty = ryS + dy
            tx = rxS + dx
            inside = (ty >= 0) & (ty < H) & (tx >= 0) & (tx < W)
            if l < last_valid_lanes:
                lane_ok = 1
            else:                                   # padding lane in the last beat
                lane_ok = ~lastlaneS
            with m.If(adv):
                m.d.sync += maskA[l].eq(inside & lane_ok)

            # Address of (row slot of y+dy, x+dx, b) = centre + dy * WNB + dx * NB modulo the
            # ring. |offset| <= 2R * (WNB + NB) < NR * WNB = depth (NR >= 2R + 2), so the sum
            # lies in (-depth, 2 * depth): it is the one of centre + off, centre - depth + off,
            # centre + depth + off that lies in [0, depth), chosen by two sign bits (three
            # parallel adders, then one 3-way choice). Out-of-image positions yield some
            # in-range address whose data is masked to 0.
            raw = Signal(ashape, name=f"raw_addr{l}")
            raw_m = Signal(ashape, name=f"raw_addr_m{l}")
            raw_p = Signal(ashape, name=f"raw_addr_p{l}")
            m.d.comb += [raw.eq(centreS + offS), raw_m.eq(centreSm + offS),
                         raw_p.eq(centreSp + offS)]
            addr = Mux(raw < 0, raw_p, Mux(raw_m >= 0, raw_m, raw))
            addrA = Signal(range(self.depth), name=f"addr_a{l}", reset_less=True)
            with m.If(adv):
                m.d.sync += addrA.eq(addr[:len(addrA)])

            # Memory read (stage A -> B), then the output register (B -> C).
            m.d.comb += [rp.en.eq(adv), rp.addr.eq(addrA)]
            with m.If(adv):
                m.d.sync += self.o.payload.data[l].eq(Mux(maskB[l], rp.data, 0))

        m.d.comb += self.o.payload.last.eq(lastC)
        return m
