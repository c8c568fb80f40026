"""MacArray: a quantized 1×1 convolution engine with ``p_in × p_out`` multipliers.

For every input pixel it computes ``acc[o] = bias[o] + Σ_i w[o, i] * x[i]`` (DESIGN.md §1,
conv1x1) and, unless it is the classifier, requantizes it with :class:`~hw.requant.Requant`.
Stride is handled upstream: the MacArray sees only the pixels it must compute.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .dsp import ecp5_ff_copy
from .dsp import mult18x18d_registered as _mult18x18d_registered
from .params import ParamKind, param_bus_signature, param_write_stage
from .requant import M_BITS, SH_BITS, Requant
from .resources import Cost, MemorySpec, Multiplier, const_mul, fifo_memories
from .stream import beats_per_pixel, pixel_stream, require_int

__all__ = ["MacArray"]


def _index(count, name):
    """A counter/index for ``count`` values, at least 1 bit wide: a zero-width signal (count
    1) would reach the Verilog as an undriven, unused net."""
    return Signal(range(max(count, 2)), name=name)


class MacArray(wiring.Component):
    """Quantized 1×1 convolution: ``p_in × p_out`` signed×unsigned multipliers, weights in RAM.

    Schedule. A pixel is ``NBi = ceil(cin / p_in)`` input beats; the output pixel is
    ``NBo = ceil(cout / p_out)`` output beats. For each output fold ``j`` and each input fold
    ``i`` the array spends one cycle with all ``p_in · p_out`` multipliers busy on weight row
    ``j · NBi + i`` (rows are read sequentially, so the address is a plain counter). After the
    last input fold of ``j`` the bias is added and output beat ``j`` goes to Requant (or out
    raw, ``requant=False``). Steady state: one pixel every ``NBi · NBo`` cycles, every
    multiplier busy every cycle, including ``NBi · NBo = 1`` (one pixel per cycle).

    Input double buffer. Two pixel banks of registers: the input stream fills one bank while
    the fold sequencer reads the other, so loading the next pixel (``NBi`` cycles) is hidden
    behind computing this one (``NBi · NBo >= NBi`` cycles). ``i.ready`` is ``not full`` of the
    bank being filled, a register: it never depends on ``o.ready`` combinationally.

    Parameter-write latency. With ``param_stages=2`` (the default) a beat on ``params`` is in
    its memory three cycles later, and a pixel's first fold reads weight row 0 two cycles
    after the pixel's beat is taken: so the first pixel after a load may be offered from the
    second cycle after the last parameter beat on (one idle cycle between them); a pixel on
    the very next cycle could read a row-0 weight written by that last beat on the same edge,
    i.e. the old value. (``param_stages=1``: no idle cycle needed.) The accelerator never
    comes near this: ``hw.params`` sends a conv's biases (one beat per output channel) after
    its weights, its parameter path has two registers (the bus, the block's own) where its
    image path has one register slice before the first block, and the link sends images
    only after the whole load. (Holding
    ``i.ready`` low after each parameter beat instead put the parameter decode's register
    into the image handshake: the 85F digits design's seed-2 critical path, 70.6 MHz.)

    Backpressure. The arithmetic pipeline has no stall logic. An output beat is only issued
    while the output FIFO has credit for it (``pending`` counts beats issued and not yet taken
    from ``o``; it never exceeds the FIFO depth), so a stalled ``o`` can neither drop nor
    duplicate data; issue simply pauses.

    Pipeline, cycles after issue: 0 weight-RAM read and input-beat select, 1 weight row and
    input beat registered near the multipliers, 2 in the multipliers' input registers, 3 in
    their output registers, 4 products in fabric flip-flops, 5 products summed in pairs,
    6 lane sums, 7 accumulate; raw (``requant=False``): 8 ``+ bias`` (its row read in stage
    5, registered in 6), 9 FIFO write; requant: 8 hold the beat, 9 feed lane group 0 to the
    shared Requant (bias/m/sh row read), 10 constants registered, 11 ``+ bias``, 12..19 the
    pipelined Requant,
    (gather,) FIFO write. Every block-RAM output lands in a flip-flop, and no path runs
    through a multiplier (timing: ECP5 block RAMs have a ~5.8 ns clock-to-out; a DSP block's
    inputs and outputs are ~8 ns of routing from the fabric in a full 85F): on an ECP5
    (``platform.family == "ecp5"``) each product is an instantiated ``MULT18X18D`` with its
    input and output registers clocked, elsewhere flip-flops of the same latency.
    :attr:`latency` counts the cycles from the issue of an output beat's last fold to that
    beat on ``o`` (empty FIFO, ``o.ready`` high): 11 raw, 22 with ``rq_groups = 1``,
    ``22 + rq_groups`` otherwise. The latency only sizes the output FIFO (the credit); the steady-state rate is
    one pixel every ``NBi · NBo`` cycles whatever it is.

    Shared Requant. Output beats leave the accumulators at most once every ``NBi`` cycles, so
    a Requant of ``rq_lanes = ceil(p_out / NBi)`` lanes, fed one group of lanes per cycle for
    ``rq_groups = ceil(p_out / rq_lanes) <= NBi`` cycles and gathered back into a beat, keeps
    full rate. A Requant lane is a 32×16 multiplier (two iCE40 SB_MAC16 or ECP5 MULT18X18D)
    plus a 49-bit barrel shifter, so this saves DSPs and LUTs whenever ``NBi > 1``. The bias,
    m and sh memories are ``rq_lanes`` wide with one row per (output beat, lane group), read
    by a counter in feed order; on iCE40, whose block RAMs are at most 16 bits wide, this
    narrows e.g. the bias RAM of a ``p_out = 4`` layer from 8 block RAMs to 2. (The
    parameter port keeps the :mod:`hw.params` row/lane addressing; the write side remaps.)

    Accumulator width. One product ``w·x`` has ``|w·x| <= 2**(wb-1) · (2**ib - 1) <
    2**(wb+ib-1)``, so it fits ``signed(wb + ib)``. A sum of at most ``cin`` of them is
    bounded by ``cin`` times that, so it fits ``S = wb + ib + ceil(log2(cin))`` signed bits.
    The accumulator (excluding the bias) is ``min(S, 32)`` bits. When ``S <= 32`` every partial
    sum is a sum of a subset of the same terms (padding terms are 0), so it fits as well and is
    exact. When ``S > 32`` the accumulator and the ``+ bias`` wrap modulo ``2**32``: two's
    complement addition is exact modulo ``2**32``, and the artifact guarantees (DESIGN.md §1)
    that the final ``bias + Σ w·x`` lies in int32, so the wrapped result equals it exactly even
    if a partial sum left the int32 range.

    Padding. Input lanes of channels ``>= cin`` are masked to 0 when a beat is stored (and
    their weights are never written, so stay 0). Output lanes of channels ``>= cout`` carry
    don't-care values, as the pixel-stream convention allows.

    Two weight banks (``banks=2``, for a producer that rewrites the weights per image, e.g.
    :class:`~hw.dynamic_conv.DynamicConv1x1`): the weight and bias memories get a second bank
    of the same shape (rows ``NR .. 2·NR - 1`` resp. bias rows ``nbo .. 2·nbo - 1`` on the
    parameter port), every input beat carries its bank on the side input ``wsel`` (sampled
    with the beat, kept with its pixel and piped beside it to the bias read), and ``wrow``
    writes a whole weight row (``p_in · p_out`` weights) in one cycle. So the weights of the
    next image can be written into one bank while this image is computed from the other.
    ``m``/``sh`` stay single. With ``banks=1`` (the default) the block is the plain conv1x1
    engine, port for port and memory for memory.

    Parameters
    ----------
    cin, cout : int
        Input / output channels.
    p_in, p_out : int
        Input lanes (``i`` stream) and output lanes (``o`` stream); ``p_in · p_out`` multipliers.
    in_bits : int
        Width of the unsigned input activations.
    weight_bits : int
        Width of the signed weights (2..8 in DESIGN.md; 2..16 accepted).
    act_bits : int
        Width of the unsigned output activations (ignored when ``requant=False``).
    requant : bool
        Requantize (hidden layers) or output the raw int32 accumulator (classifier).
    layer_id : int
        Layer index compared with ``params.payload.layer``.
    banks : int
        1 (default) or 2 weight/bias banks (see above).
    param_stages : int
        Registered stages of the parameter-write decode (:func:`hw.params.param_write_stage`):
        2 (default; a ``params`` beat is in its memory 3 cycles after it is on the port) or
        1 (2 cycles; for a producer whose own timing counts that latency, e.g.
        :class:`~hw.dynamic_conv.DynamicConv1x1`, which writes its weights per image).

    Attributes
    ----------
    i : In(pixel_stream(p_in, in_bits))
        Input pixels, ``NBi`` beats each.
    o : Out(pixel_stream(p_out, act_bits)) or Out(pixel_stream(p_out, 32, is_signed=True))
        Output pixels, ``NBo`` beats each; ``last`` on the last beat of the pixel whose final
        input beat carried ``last``.
    params : In(param_bus_signature())
        Parameter writes (WEIGHT, BIAS, M, SH of this ``layer_id``); ``ready`` is always 1.
    wsel : In(1)
        ``banks=2`` only: weight/bias bank of the beat on ``i``.
    wrow : In(valid, bank, row, data[p_in · p_out])
        ``banks=2`` only: a whole weight row written (``data`` element ``lo · p_in + li``, the
        parameter-port lane order); it has priority over a WEIGHT beat on ``params``.
    nbi, nbo : int
        Input / output beats per pixel.
    cycles_per_pixel : int
        ``nbi · nbo``, steady-state initiation interval.
    latency : int
        Cycles from issuing a beat's last fold to that beat being available on ``o``.
    acc_bits : int
        Width of the product accumulator (see above).
    fifo_depth : int
        Output FIFO entries (the issue credit).
    rq_lanes : int
        Requant lanes, ``ceil(p_out / nbi)``: the beat's ``p_out`` values go through them in
        ``rq_groups = ceil(p_out / rq_lanes) <= nbi`` consecutive cycles.

    Raises
    ------
    ValueError
        A shape parameter is not a positive integer, a width is out of range, or
        ``layer_id`` does not fit the 8-bit layer field.
    """

    #: Input-bank flip-flops per copy of a bank's registered issue strobe (see elaborate):
    #: small enough that one copy's net stays within a few slices' reach.
    _ISSUE_FANOUT_BITS = 64

    def __init__(self, *, cin, cout, p_in, p_out, in_bits, weight_bits, act_bits,
                 requant=True, layer_id=0, banks=1, param_stages=2):
        for name, value in (("cin", cin), ("cout", cout), ("p_in", p_in), ("p_out", p_out)):
            require_int("MacArray", name, value, 1)
        require_int("MacArray", "in_bits", in_bits, 1, 16)
        require_int("MacArray", "weight_bits", weight_bits, 2, 16)
        require_int("MacArray", "act_bits", act_bits, 1, 16)
        require_int("MacArray", "layer_id", layer_id, 0, 255)
        require_int("MacArray", "banks", banks, 1, 2)
        require_int("MacArray", "param_stages", param_stages, 1, 2)
        self.banks = banks
        self.param_stages = param_stages
        self.cin, self.cout = cin, cout
        self.p_in, self.p_out = p_in, p_out
        self.in_bits, self.weight_bits, self.act_bits = in_bits, weight_bits, act_bits
        self.requant = bool(requant)
        self.layer_id = layer_id
        geo = self.geometry(cin=cin, cout=cout, p_in=p_in, p_out=p_out, requant=requant)
        self.nbi, self.nbo = geo["nbi"], geo["nbo"]
        self.cycles_per_pixel = self.nbi * self.nbo
        self.prod_bits = weight_bits + in_bits
        self.acc_bits = min(self.prod_bits + ceil_log2(cin), 32)
        self.rq_lanes, self.rq_groups = geo["rq_lanes"], geo["rq_groups"]
        self._write_at, self.latency = geo["write_at"], geo["latency"]
        self.fifo_depth = geo["fifo_depth"]
        self._cost_args = dict(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=in_bits,
                               weight_bits=weight_bits, act_bits=act_bits, requant=requant)
        if banks != 1:
            self._cost_args["banks"] = banks
        if self.requant:
            out_sig = pixel_stream(p_out, act_bits)
        else:
            out_sig = pixel_stream(p_out, 32, is_signed=True)
        members = {
            "i": In(pixel_stream(p_in, in_bits)),
            "o": Out(out_sig),
            "params": In(param_bus_signature()),
        }
        if banks == 2:
            members["wsel"] = In(1)
            members["wrow"] = In(data.StructLayout({
                "valid": 1, "bank": 1, "row": range(max(self.nbi * self.nbo, 2)),
                "data": data.ArrayLayout(signed(weight_bits), p_in * p_out)}))
        super().__init__(members)

    @staticmethod
    def geometry(*, cin, cout, p_in, p_out, requant=True):
        """Folds, shared-Requant lanes, latency and FIFO depth of a MacArray (a dict).

        The constructor and :meth:`cost` both use this, so the resources the planner counts
        are the ones the RTL builds.
        """
        nbi, nbo = beats_per_pixel(cin, p_in), beats_per_pixel(cout, p_out)
        # Issue (0) -> operands at the multipliers (1b, 1c) -> products (1d, 2) -> pair
        # sums (2s) -> lane sums (3) -> accumulate (4) -> +bias (5) -> [Requant] -> FIFO
        # write -> FIFO output register.
        # Requant lanes: an output beat leaves the accumulators only every NBi cycles, so
        # ceil(p_out / NBi) Requant lanes, each used on ceil(p_out / rq_lanes) <= NBi
        # consecutive cycles, keep up with it. A Requant lane is a 32x16 multiplier (two
        # DSP blocks, see hw.resources) plus a 49-bit barrel shifter, so sharing it saves
        # real area.
        rq_lanes = -(-p_out // nbi)
        rq_groups = -(-p_out // rq_lanes)
        # (Stage 1b registers the weight row and the input beat at the multipliers' inputs,
        # 1c and 1d are the multipliers' own input and output registers.)
        if not requant:
            write_at = 9
        else:
            # 9: first group fed (constants' row read), 10: constants registered, 11: + bias,
            # 12..19: pipelined Requant, + (groups - 1) serial feed cycles + 1 gather register
            # when shared.
            write_at = 12 + Requant.LATENCY_PIPELINED
            if rq_groups > 1:
                write_at += rq_groups - 1 + 1
        latency = write_at + 2
        # Credit must cover every beat in flight at full rate plus the FIFO's own
        # read latency, so that o.ready held high never throttles issue.
        return dict(nbi=nbi, nbo=nbo, rq_lanes=rq_lanes, rq_groups=rq_groups,
                    write_at=write_at, latency=latency, fifo_depth=latency + 2)

    @classmethod
    def cost(cls, *, cin, cout, p_in, p_out, in_bits, weight_bits, act_bits, requant=True,
             pixels=1, layer_id=0, banks=1):
        """Resources of a MacArray as built (see :mod:`hw.resources`).

        Multipliers: ``p_in * p_out`` weight × activation products (signed ``weight_bits`` ×
        unsigned ``in_bits``) and, with ``requant``, ``rq_lanes`` Requant products (signed
        32-bit accumulator × unsigned 16-bit ``m``). Memories: the weight, bias (and m, sh)
        RAMs in their hardware shapes and the output FIFO (``banks=2``: weight and bias RAMs
        of twice the rows). Cycles: ``pixels * NBi * NBo`` (every multiplier busy every cycle
        in steady state).
        """
        g = cls.geometry(cin=cin, cout=cout, p_in=p_in, p_out=p_out, requant=requant)
        nbi, nbo = g["nbi"], g["nbo"]
        mults = [Multiplier.amaranth("mac", p_in * p_out, weight_bits, True, in_bits, False)]
        # Parameter RAMs: as param_mem() builds them (at least 2 rows).
        mems = [MemorySpec("weights", max(banks * nbo * nbi, 2), p_in * p_out * weight_bits)]
        if requant:
            r, groups = g["rq_lanes"], g["rq_groups"]
            mults.append(Multiplier.amaranth("requant", r, 32, True, M_BITS, False))
            rows = max(nbo * groups, 2)
            mems += [MemorySpec("bias", max(banks * nbo * groups, 2), r * 32),
                     MemorySpec("mult", rows, r * M_BITS),
                     MemorySpec("shift", rows, r * SH_BITS)]
            out_width = p_out * act_bits + 1
        else:
            mems.append(MemorySpec("bias", max(banks * nbo, 2), p_out * 32))
            out_width = p_out * 32 + 1
        mems += fifo_memories("fifo", out_width, g["fifo_depth"])
        return Cost(cycles=pixels * nbi * nbo, multipliers=mults, memories=mems)

    def resources(self, pixels=1):
        """:meth:`cost` of this instance (``pixels`` per image)."""
        return self.cost(**self._cost_args, pixels=pixels)

    def elaborate(self, platform):
        m = Module()
        cin, p_in, p_out = self.cin, self.p_in, self.p_out
        nbi, nbo = self.nbi, self.nbo
        ib, wb = self.in_bits, self.weight_bits
        beat_layout = data.ArrayLayout(unsigned(ib), p_in)

        # ---------------------------------------------------------------- parameter memories
        # Parameter writes are decoded over two registered stages (hw.params.param_write_stage)
        # and land three cycles after the beat on the port (two with param_stages=1):
        # stage 1 registers, per memory, ``mine & kind == K & row < depth & lane < lanes``
        # with the beat's row, lane and data; stage 2 registers each memory's write address
        # and element enables (a compare of the few registered lane bits) and the data word
        # once for all memories; the memory writes on the next edge. The one-stage form
        # (the wide bus decode straight into every element's enable register) was the whole
        # 85F digits design's critical path at 88 MHz: L7.conv's parameter payload register
        # -> the weight-write decode, whose terms ABC9 shared with the `mult` memory's ->
        # 5 LUT levels across the die -> weights_wen_q (11.3 ns, 9.4 ns of it routing).
        # Nothing sees the extra cycle: parameters are loaded while no image is in flight,
        # and both stages advance every cycle, so back-to-back beats are all written, in
        # order. Every register loads only on this block's own beats: the same registers
        # loaded on every beat would be identical in every MacArray and Yosys' opt_merge
        # would keep one copy for all of them, whose fan-out to the far blocks' RAMs was
        # once the design's critical path (L9.conv's write address register -> 14.6 ns of
        # routing -> L7.conv's weight RAM, 65.9 MHz). (Registering the bus beat itself,
        # before the decode, made the whole digits design hit a Yosys 0.70 ABC9 assertion;
        # see docs/boards.md "Timing closure".)
        nb = self.banks
        specs = {"weights": (signed(wb), p_in * p_out, nbo * nbi, ParamKind.WEIGHT, None, nb)}
        if self.requant:
            # Constants of a shared Requant: one row per (output beat, lane group).
            r = self.rq_lanes
            specs["bias"] = (signed(32), p_out, nbo, ParamKind.BIAS, r, nb)
            specs["mult"] = (unsigned(M_BITS), p_out, nbo, ParamKind.M, r, 1)
            specs["shift"] = (unsigned(SH_BITS), p_out, nbo, ParamKind.SH, r, 1)
        else:
            specs["bias"] = (signed(32), p_out, nbo, ParamKind.BIAS, None, nb)
        st1 = param_write_stage(
            m, self.params, self.layer_id,
            {name: (kind, depth * banks, lanes)
             for name, (_, lanes, depth, kind, _, banks) in specs.items()},
            registered=self.param_stages == 2, name="par")
        # Stage 2's data word, loaded on this block's beats only (see above).
        par_data = Signal(32, name="par_data_q", reset_less=True)
        with m.If(st1.any):
            m.d.sync += par_data.eq(st1.data)

        def param_mem(name, elem, lanes, depth, kind, per_row=None, banks=1):
            """Memory for one parameter kind; hardware row ``row``, lane ``lane`` (params.py)
            is stored at row ``row * G + lane // per_row``, element ``lane % per_row``, with
            ``G = ceil(lanes / per_row)`` (``per_row = lanes``: the params.py layout itself).
            Narrow rows let a shared Requant read its group's constants directly. ``banks``
            copies follow one another (bank b at rows ``b · depth ..`` on the port)."""
            depth = depth * banks
            per_row = lanes if per_row is None else per_row
            groups = -(-lanes // per_row)
            # At least 2 rows: a 1-row memory would have a zero-width address.
            mem = memory.Memory(shape=data.ArrayLayout(elem, per_row),
                                depth=max(depth * groups, 2), init=[])
            m.submodules[name] = mem
            # granularity=1: a parameter beat writes one element of a row.
            wp = mem.write_port(granularity=1)
            # Stage 2: the write address and element enables, from stage 1's registers
            # (``hit`` already holds kind, row < depth and lane < lanes).
            w_addr = Signal.like(wp.addr, name=f"{name}_waddr_q", reset_less=True)
            w_en = Signal.like(wp.en, name=f"{name}_wen_q")
            hit = st1.hit[name]
            if groups == 1:
                with m.If(hit):
                    m.d.sync += w_addr.eq(st1.row)
                for e in range(per_row):
                    m.d.sync += w_en[e].eq(hit & (st1.lane == e))
            else:
                sub_row = Signal(range(groups), name=f"{name}_sub_row")
                elem_sel = Signal(range(max(per_row, 2)), name=f"{name}_elem")
                with m.Switch(st1.lane):
                    for lane in range(lanes):
                        with m.Case(lane):
                            m.d.comb += [sub_row.eq(lane // per_row),
                                         elem_sel.eq(lane % per_row)]
                # row * groups as shifts and adds: a product by a constant would take a DSP.
                with m.If(hit):
                    m.d.sync += w_addr.eq(const_mul(st1.row, groups) + sub_row)
                for e in range(per_row):
                    m.d.sync += w_en[e].eq(hit & (elem_sel == e))
            m.d.comb += [wp.addr.eq(w_addr), wp.en.eq(w_en)]
            if name == "weights" and banks == 2:
                # The row-wide write port (priority over the parameter port): all lanes.
                wr = self.wrow
                with m.If(wr.valid):
                    m.d.comb += wp.addr.eq(Mux(wr.bank, nbo * nbi, 0) + wr.row)
                    for e in range(per_row):
                        m.d.comb += [wp.en[e].eq(1), wp.data[e].eq(wr.data[e])]
                with m.Else():
                    for e in range(per_row):
                        # Truncation of the 32-bit word to the element width is intended.
                        m.d.comb += wp.data[e].eq(par_data)
                return mem.read_port(domain="sync")
            for e in range(per_row):
                # Truncation of the 32-bit word to the element width is intended.
                m.d.comb += wp.data[e].eq(par_data)
            return mem.read_port(domain="sync")

        rd = {name: param_mem(name, elem, lanes, depth, kind, per_row, banks)
              for name, (elem, lanes, depth, kind, per_row, banks) in specs.items()}
        w_rd, b_rd = rd["weights"], rd["bias"]
        if self.requant:
            m_rd, s_rd = rd["mult"], rd["shift"]

        # ---------------------------------------------------------------- input double buffer
        # (Data registers here and below have no reset: only valid/full/counter bits need one,
        # which keeps the reset's fan-out small.)
        bank_regs = [Signal(beat_layout, name=f"xbuf{b}_{k}", reset_less=True)
                     for b in range(2) for k in range(nbi)]
        full = [Signal(name=f"full{b}") for b in range(2)]
        # Next values of full/rbank/pending/fi (comb, defaults here, set below): the fold
        # sequencer's issue condition is computed from registers of their next values, so
        # the issue strobe is one LUT from three flip-flops (109.6 MHz on an ECP5 with the
        # credit compare and the bank's full-flag mux in front of the input banks), and the
        # strobe that selects every input-bank register's rotate (the classifier: 2 x 48
        # beats) is itself a register of that next state, in copies (see the sequencer).
        full_n = [Signal(name=f"full{b}_next") for b in range(2)]
        m.d.comb += [full_n[b].eq(full[b]) for b in range(2)]
        m.d.sync += [full[b].eq(full_n[b]) for b in range(2)]
        bank_last = [Signal(name=f"bank_last{b}") for b in range(2)]
        wbank = Signal()                       # bank being filled
        wbeat = _index(nbi, "wbeat")           # next beat of that bank
        m.d.comb += self.i.ready.eq(~Mux(wbank, full[1], full[0]))

        # Mask padding lanes (channel >= cin) of the last beat, so a producer's garbage there
        # never reaches a product.
        valid_in_last = cin - (nbi - 1) * p_in
        masked = Signal(beat_layout)
        for k in range(p_in):
            lane = self.i.payload.data[k]
            if k >= valid_in_last:
                m.d.comb += masked[k].eq(Mux(wbeat == nbi - 1, 0, lane))
            else:
                m.d.comb += masked[k].eq(lane)

        # banks=2: the weight bank of each pixel bank, taken with its beats.
        bank_sel = [Signal(name=f"bank_sel{b}") for b in range(2)]
        if self.banks == 2:
            with m.If(self.i.valid & self.i.ready):
                for b in range(2):
                    with m.If(wbank == b):
                        m.d.sync += bank_sel[b].eq(self.wsel)

        with m.If(self.i.valid & self.i.ready):
            for b in range(2):
                with m.If(wbank == b):
                    with m.Switch(wbeat):
                        for k in range(nbi):
                            with m.Case(k):
                                m.d.sync += bank_regs[b * nbi + k].eq(masked)
            with m.If(wbeat == nbi - 1):
                m.d.sync += [wbeat.eq(0), wbank.eq(~wbank)]
                for b in range(2):
                    with m.If(wbank == b):
                        m.d.comb += full_n[b].eq(1)
                        m.d.sync += bank_last[b].eq(self.i.payload.last)
            with m.Else():
                m.d.sync += wbeat.eq(wbeat + 1)

        # ---------------------------------------------------------------- fold sequencer
        rbank = Signal()                       # bank being computed
        fi = _index(nbi, "fi")                 # input fold
        fj = _index(nbo, "fj")                 # output fold
        row = _index(nbi * nbo, "row")         # weight row = fj * nbi + fi, as a counter
        pending = Signal(range(self.fifo_depth + 1))
        rbank_n = Signal()
        m.d.comb += rbank_n.eq(rbank)
        m.d.sync += rbank.eq(rbank_n)
        # Registers equal, cycle for cycle, to full[rbank], fi == nbi - 1 and
        # pending < fifo_depth (computed from the next state).
        rfull = Signal(name="rfull_q")
        credit = Signal(init=1, name="credit_q")
        if nbi == 1:
            last_fold = Const(1, 1)
        else:
            last_fold = Signal(name="last_fold_q")
        # Only the last fold of j emits an output beat, so only it needs FIFO credit.
        issue = Signal()
        m.d.comb += issue.eq(rfull & (~last_fold | credit))

        with m.If(issue):
            with m.If(last_fold):
                m.d.sync += fi.eq(0)
                with m.If(fj == nbo - 1):
                    m.d.sync += [fj.eq(0), row.eq(0)]
                    m.d.comb += rbank_n.eq(~rbank)
                    for b in range(2):
                        with m.If(rbank == b):
                            m.d.comb += full_n[b].eq(0)
                with m.Else():
                    m.d.sync += [fj.eq(fj + 1), row.eq(row + 1)]
            with m.Else():
                m.d.sync += [fi.eq(fi + 1), row.eq(row + 1)]

        out_taken = self.o.valid & self.o.ready
        emitted = Signal()
        m.d.comb += emitted.eq(issue & last_fold)
        pending_n = Signal.like(pending)
        m.d.comb += pending_n.eq(pending + emitted - out_taken)
        # credit_q = (pending_n < fifo_depth), but not through the adder: pending <= depth,
        # so a beat emitted and none taken leaves credit iff pending < depth - 1 (a compare
        # of a register with a constant, ready early in the cycle), one taken and none emitted
        # always leaves credit, otherwise it is unchanged. The FIFO's taken strobe, which
        # arrives from the next stage late in the cycle, then passes one LUT instead of the
        # pending adder and the compare's carry chains (the 85F digits design's seed-2
        # critical path at 88b5089: r_rdy -> out_taken -> adder -> compare -> credit_q,
        # 10.99 ns).
        below_last = Signal()
        m.d.comb += below_last.eq(pending < self.fifo_depth - 1)
        credit_n, rfull_n = Signal(name="credit_next"), Signal(name="rfull_next")
        m.d.comb += [credit_n.eq(Mux(emitted & ~out_taken, below_last,
                                     Mux(out_taken & ~emitted, 1, credit))),
                     rfull_n.eq(Mux(rbank_n, full_n[1], full_n[0]))]
        m.d.sync += [pending.eq(pending_n), credit.eq(credit_n), rfull.eq(rfull_n)]
        if nbi > 1:
            # fi next: 0 after the last fold, fi + 1 after another issue, else unchanged.
            last_fold_n = Signal(name="last_fold_next")
            m.d.comb += last_fold_n.eq(Mux(issue, ~last_fold & (fi == nbi - 2), last_fold))
            m.d.sync += last_fold.eq(last_fold_n)
        else:
            last_fold_n = Const(1, 1)
        # The issue strobe of each bank, as registers equal cycle for cycle to
        # ``issue & (rbank == b)`` (the same function of the registers' next values), one
        # copy per group of at most ``_ISSUE_FANOUT_BITS`` bank flip-flops. It is the select
        # of every bank flip-flop's data mux (rotate / load): as one LUT of the sequencer's
        # registers its net reached all 2 x NBi beats, and with a LUT or two in front of it
        # that fan-out was the 85F digits design's critical path (L4.conv: last_fold_q ->
        # issue -> issue & rbank -> xbuf1_0's data mux, 10.0 ns, 8.8 ns of it routing:
        # 99.89 MHz at seed 1; 103.92 MHz with the copies, the path gone from the top).
        # A copy drives only its group, so each net stays local. The copies have the same
        # next-state function, and Yosys' opt_merge merges identical inferred flip-flops
        # (``keep`` on the signal does not stop it), so on an ECP5 each copy is an
        # instantiated flip-flop (hw.dsp.ecp5_ff_copy); elsewhere they are inferred (and
        # may merge: one net, the same logic).
        issue_n = Signal(name="issue_next")
        m.d.comb += issue_n.eq(rfull_n & (~last_fold_n | credit_n))
        per_copy = max(1, self._ISSUE_FANOUT_BITS // ib)    # lanes per copy
        n_copies = -(-(nbi * p_in) // per_copy) if nbi > 1 else 0
        issue_q = [[Signal(name=f"issue{b}_q{g}") for g in range(n_copies)] for b in range(2)]
        ecp5 = getattr(platform, "family", None) == "ecp5"
        for b in range(2):
            issue_bn = Signal(name=f"issue{b}_next")
            m.d.comb += issue_bn.eq(issue_n & (rbank_n == b))
            for g, q in enumerate(issue_q[b]):
                if ecp5:
                    m.submodules[f"issue{b}_ff{g}"] = ecp5_ff_copy(issue_bn, q)
                else:
                    m.d.sync += q.eq(issue_bn)

        # Stage 0 -> 1: weight row read (sync RAM) and the selected input beat.
        sel0 = Mux(rbank, bank_sel[1], bank_sel[0])
        if self.banks == 2:
            m.d.comb += w_rd.addr.eq(Mux(sel0, nbi * nbo, 0) + row)
        else:
            m.d.comb += w_rd.addr.eq(row)
        # The bank being computed rotates by one beat on every issue, so the beat of fold fi
        # is always at its position 0 (after NBi · NBo issues, a multiple of NBi, the bank is
        # back in order when it is released). Selecting it is a 2-way mux instead of an
        # NBi-way one behind an index adder (the classifier's 48 folds: a 96-way mux that
        # limited the block to 69 MHz on an ECP5). Never the bank being filled: the writer
        # only fills a bank that is not full, the reader only issues from a full one.
        # Lane ``l`` of beat ``k`` listens to copy ``(k * p_in + l) // per_copy`` of its
        # bank's issue strobe.
        if nbi > 1:
            for b in range(2):
                for k in range(nbi):
                    for lane in range(p_in):
                        with m.If(issue_q[b][(k * p_in + lane) // per_copy]):
                            m.d.sync += bank_regs[b * nbi + k][lane].eq(
                                bank_regs[b * nbi + (k + 1) % nbi][lane])
        x1 = Signal(beat_layout, reset_less=True)
        v1, first1, lastf1, last1 = Signal(), Signal(), Signal(), Signal()
        j1 = _index(nbo, "j1")
        m.d.sync += [
            x1.eq(Mux(rbank, bank_regs[nbi], bank_regs[0])),
            v1.eq(issue), first1.eq(fi == 0), lastf1.eq(last_fold), j1.eq(fj),
            last1.eq(Mux(rbank, bank_last[1], bank_last[0]) & (fj == nbo - 1)),
        ]

        # Stage 1 -> 1b: the weight row and the input beat registered at the multipliers'
        # inputs. A block RAM's unregistered output (ECP5 DP16KD: ~5.8 ns clock-to-out) routed
        # into a DSP block and through it was the whole design's critical path (~22 ns).
        wq = Signal.like(w_rd.data, name="wq", reset_less=True)
        xq = Signal(beat_layout, name="xq", reset_less=True)
        m.d.sync += [wq.eq(w_rd.data), xq.eq(x1)]
        v1b, first1b, lastf1b, last1b = Signal(), Signal(), Signal(), Signal()
        j1b = _index(nbo, "j1b")
        m.d.sync += [v1b.eq(v1), first1b.eq(first1), lastf1b.eq(lastf1), last1b.eq(last1),
                     j1b.eq(j1)]

        # Stages 1b -> 1c -> 1d -> 2: all p_in * p_out products (the multipliers, busy on
        # every issue), through the multiplier's own input and output registers: 1c the
        # operands registered at the multiplier, 1d its product registered, 2 the product
        # in a fabric flip-flop. On an ECP5 these are the MULT18X18D's input and output
        # registers (instantiated: Yosys packs no register into a MULT18X18D), so the block
        # has no path through a DSP block and the ~8 ns of routing on each side of it
        # (fabric register -> DSP -> fabric register: the whole 85F design's critical path
        # at 47 MHz) is split into two register-to-register hops. Elsewhere (simulation,
        # iCE40, a product Yosys would leave to LUTs) flip-flops of the same latency.
        # The fabric product registers keep their reset: without one, Yosys' iCE40 DSP
        # packing folds some products into other SB_MAC16s' adders (12 products -> 8
        # blocks), so the count would no longer be one block per product as hw.resources
        # states and the planner counts (tests/test_hw_resources.py checks it against Yosys).
        prods = [[Signal(signed(self.prod_bits), name=f"prod{o}_{k}")
                  for k in range(p_in)] for o in range(p_out)]
        ecp5_dsp = (getattr(platform, "family", None) == "ecp5"
                    and Multiplier.amaranth("mac", 1, wb, True, ib, False).dsp("ecp5") == 1)
        if not ecp5_dsp:
            xc = [Signal(unsigned(ib), name=f"x1c_{k}", reset_less=True) for k in range(p_in)]
            m.d.sync += [xc[k].eq(xq[k]) for k in range(p_in)]
        for o in range(p_out):
            for k in range(p_in):
                p1d = Signal(signed(self.prod_bits), name=f"prod1d{o}_{k}", reset_less=True)
                if ecp5_dsp:
                    m.submodules[f"mult{o}_{k}"] = _mult18x18d_registered(
                        wq[o * p_in + k], xq[k], p1d)
                else:
                    wc = Signal(signed(wb), name=f"w1c{o}_{k}", reset_less=True)
                    m.d.sync += [wc.eq(wq[o * p_in + k]), p1d.eq(wc * xc[k])]
                m.d.sync += prods[o][k].eq(p1d)
        v2, first2, lastf2, last2 = Signal(), Signal(), Signal(), Signal()
        j2 = _index(nbo, "j2")
        pipe = [(v1b, first1b, lastf1b, last1b, j1b)]
        for stage in ("1c", "1d"):
            regs = (Signal(name=f"v{stage}"), Signal(name=f"first{stage}"),
                    Signal(name=f"lastf{stage}"), Signal(name=f"last{stage}"),
                    _index(nbo, f"j{stage}"))
            m.d.sync += [r.eq(q) for r, q in zip(regs, pipe[-1])]
            pipe.append(regs)
        m.d.sync += [r.eq(q) for r, q in zip((v2, first2, lastf2, last2, j2), pipe[-1])]

        # Stage 2 -> 2s: the first level of each output lane's adder tree, the products
        # summed in pairs and registered. Without this cut Yosys merges the whole tree into
        # one $macc (LUT compressor levels, then a carry chain): with p_in = 8 that was
        # 10.5 ns, the limiting path of L4.conv alone (95.2 MHz).
        pair_bits = self.prod_bits + (1 if p_in > 1 else 0)
        pairs = []
        for o in range(p_out):
            row = []
            for k in range(0, p_in, 2):
                pr = Signal(signed(pair_bits), name=f"pair{o}_{k // 2}", reset_less=True)
                m.d.sync += pr.eq(prods[o][k] + prods[o][k + 1] if k + 1 < p_in
                                  else prods[o][k])
                row.append(pr)
            pairs.append(row)
        v2s, first2s, lastf2s, last2s = Signal(), Signal(), Signal(), Signal()
        j2s = _index(nbo, "j2s")
        m.d.sync += [v2s.eq(v2), first2s.eq(first2), lastf2s.eq(lastf2), last2s.eq(last2),
                     j2s.eq(j2)]

        # Stage 2s -> 3: per-output-lane sum over the pair sums.
        psum_bits = self.prod_bits + ceil_log2(p_in)
        psums = [Signal(signed(psum_bits), name=f"psum{o}", reset_less=True)
                 for o in range(p_out)]
        for o in range(p_out):
            # A balanced adder tree (ceil(log2(p_in)) - 1 carry chains deep), not a chain of
            # adders: Yosys keeps the association it is given.
            terms = list(pairs[o])
            while len(terms) > 1:
                terms = [terms[k] + terms[k + 1] if k + 1 < len(terms) else terms[k]
                         for k in range(0, len(terms), 2)]
            m.d.sync += psums[o].eq(terms[0])
        v3, first3, lastf3, last3 = Signal(), Signal(), Signal(), Signal()
        j3 = _index(nbo, "j3")
        m.d.sync += [v3.eq(v2s), first3.eq(first2s), lastf3.eq(lastf2s), last3.eq(last2s),
                     j3.eq(j2s)]

        # Stage 3 -> 4: accumulate over the input folds.
        accs = [Signal(signed(self.acc_bits), name=f"acc{o}", reset_less=True)
                for o in range(p_out)]
        with m.If(v3):
            for o in range(p_out):
                m.d.sync += accs[o].eq(Mux(first3, 0, accs[o]) + psums[o])
        v4, last4 = Signal(), Signal()
        m.d.sync += [v4.eq(v3 & lastf3), last4.eq(last3)]
        # banks=2: the beat's bank, piped beside it to the bias read.
        # (sel[k] is the bank of the beat in stage k + 1; stage 1b has its own register.)
        sel = [Signal(name=f"sel{k}") for k in range(1, 5)] if self.banks == 2 else None
        sel2s = Signal(name="sel2s")
        if sel:
            sel1b, sel1c, sel1d = Signal(name="sel1b"), Signal(name="sel1c"), Signal(name="sel1d")
            m.d.sync += [sel[0].eq(sel0), sel1b.eq(sel[0]), sel1c.eq(sel1b), sel1d.eq(sel1c),
                         sel[1].eq(sel1d), sel2s.eq(sel[1]), sel[2].eq(sel2s),
                         sel[3].eq(sel[2])]

        out_layout = self.o.payload.shape()
        m.submodules.fifo = ofifo = fifo.SyncFIFOBuffered(width=out_layout.size,
                                                          depth=self.fifo_depth)
        beat = Signal(out_layout)
        if self.requant:
            self._requant_tail(m, v4, last4, accs, b_rd, m_rd, s_rd, beat, ofifo,
                               sel[3] if sel else None)
        else:
            # Stage 4 -> 5: + bias, wrapping to int32 (exact, see the class docstring); then
            # straight to the FIFO. The bias row is read in stage 2s and registered in stage 3
            # (bq), so no block-RAM output drives the 32-bit adder directly.
            if sel:
                m.d.comb += b_rd.addr.eq(Mux(sel2s, nbo, 0) + j2s)
            else:
                m.d.comb += b_rd.addr.eq(j2s)
            bq = Signal.like(b_rd.data, name="bias_q", reset_less=True)
            m.d.sync += bq.eq(b_rd.data)
            res = [Signal(signed(32), name=f"res{o}", reset_less=True) for o in range(p_out)]
            for o in range(p_out):
                m.d.sync += res[o].eq(accs[o] + bq[o])
            v5, last5 = Signal(), Signal()
            m.d.sync += [v5.eq(v4), last5.eq(last4)]
            for o in range(p_out):
                m.d.comb += beat.data[o].eq(res[o])
            m.d.comb += [beat.last.eq(last5), ofifo.w_en.eq(v5)]
        m.d.comb += ofifo.w_data.eq(beat)
        # The FIFO's read stream is the output (its payload is the same bits, unstructured).
        wiring.connect(m, ofifo.r_stream, wiring.flipped(self.o))
        return m

    def _requant_tail(self, m, v4, last4, accs, b_rd, m_rd, s_rd, beat, ofifo, sel4=None):
        """Accumulators -> (+ bias) -> shared Requant -> gathered output beat -> FIFO."""
        p_out, r, groups = self.p_out, self.rq_lanes, self.rq_groups
        grp_bits = max(1, (groups - 1).bit_length())

        # Stage 4 -> 5: hold the beat's sums until the next output beat (>= NBi cycles
        # later, and the feed below takes rq_groups <= NBi cycles).
        res = [Signal(signed(self.acc_bits), name=f"res{o}", reset_less=True)
               for o in range(p_out)]
        v5, last5 = Signal(), Signal()
        m.d.sync += v5.eq(v4)
        with m.If(v4):
            m.d.sync += last5.eq(last4)
            for o in range(p_out):
                m.d.sync += res[o].eq(accs[o])

        # Feed: group g (lanes g*r .. g*r + r - 1) on the g-th cycle from v5. The bias/m/sh
        # rows are stored in exactly this (beat, group) order, so their address is a counter.
        grp = Signal(range(max(groups, 2)))
        busy = Signal()
        feed = v5 | busy
        feed_grp = Signal.like(grp)
        m.d.comb += feed_grp.eq(Mux(v5, 0, grp))
        if groups > 1:
            with m.If(v5):
                m.d.sync += [grp.eq(1), busy.eq(1)]
            with m.Elif(busy):
                m.d.sync += grp.eq(grp + 1)
                with m.If(grp == groups - 1):
                    m.d.sync += busy.eq(0)
        crow = _index(self.nbo * groups, "const_row")
        with m.If(feed):
            m.d.sync += crow.eq(Mux(crow == self.nbo * groups - 1, 0, crow + 1))
        if sel4 is None:
            m.d.comb += b_rd.addr.eq(crow)
        else:
            # The beat's bias bank (held with its sums until the next beat).
            sel5 = Signal()
            with m.If(v4):
                m.d.sync += sel5.eq(sel4)
            m.d.comb += b_rd.addr.eq(Mux(sel5, self.nbo * groups, 0) + crow)
        m.d.comb += [m_rd.addr.eq(crow), s_rd.addr.eq(crow)]

        f1_valid = Signal()
        f1_tag = Signal(grp_bits + 1)
        f1_acc = [Signal(signed(self.acc_bits), name=f"feed_acc{k}", reset_less=True)
                  for k in range(r)]
        m.d.sync += [f1_valid.eq(feed), f1_tag.eq(Cat(feed_grp[:grp_bits], last5))]
        for k in range(r):
            with m.Switch(feed_grp):
                for g in range(groups):
                    if g * r + k < p_out:
                        with m.Case(g):
                            m.d.sync += f1_acc[k].eq(res[g * r + k])
                with m.Default():
                    m.d.sync += f1_acc[k].eq(0)     # lane past p_out: don't-care output

        # The constants' row (read during the feed cycle) is registered first (block-RAM
        # outputs are slow; registered, they reach the adder and the Requant's DSP blocks from
        # flip-flops); then + bias, wrapping to int32 (exact, see the class docstring), with
        # m/sh registered beside it. The pipelined Requant splits its product and shift.
        m.submodules.requant = rq = Requant(lanes=r, act_bits=self.act_bits,
                                            tag_bits=grp_bits + 1, pipelined=True)
        fq_valid = Signal()
        fq_tag = Signal(grp_bits + 1, reset_less=True)
        m.d.sync += [fq_valid.eq(f1_valid), fq_tag.eq(f1_tag)]
        f2_valid = Signal()
        f2_tag = Signal(grp_bits + 1, reset_less=True)
        m.d.sync += [f2_valid.eq(fq_valid), f2_tag.eq(fq_tag)]
        m.d.comb += [rq.i.valid.eq(f2_valid), rq.i.payload.tag.eq(f2_tag)]
        for k in range(r):
            accq = Signal(signed(self.acc_bits), name=f"feed_acc_q{k}", reset_less=True)
            bq = Signal(signed(32), name=f"bias_q{k}", reset_less=True)
            mq = Signal(M_BITS, name=f"mult_q{k}", reset_less=True)
            sq = Signal(SH_BITS, name=f"shift_q{k}", reset_less=True)
            m.d.sync += [accq.eq(f1_acc[k]), bq.eq(b_rd.data[k]), mq.eq(m_rd.data[k]),
                         sq.eq(s_rd.data[k])]
            acc = Signal(signed(32), name=f"biased{k}", reset_less=True)
            mk = Signal(M_BITS, name=f"mult{k}", reset_less=True)
            sk = Signal(SH_BITS, name=f"shift{k}", reset_less=True)
            m.d.sync += [acc.eq(accq + bq), mk.eq(mq), sk.eq(sq)]
            m.d.comb += [rq.i.payload.acc[k].eq(acc), rq.i.payload.m[k].eq(mk),
                         rq.i.payload.sh[k].eq(sk)]

        q_grp = rq.o.payload.tag[:grp_bits]
        q_last = rq.o.payload.tag[grp_bits]
        if groups == 1:
            m.d.comb += [beat.data.eq(rq.o.payload.q), beat.last.eq(q_last),
                         ofifo.w_en.eq(rq.o.valid)]
        else:
            # Gather the groups into one output beat; write it once the last group is in.
            gather = Signal(beat.shape())
            with m.If(rq.o.valid):
                with m.Switch(q_grp):
                    for g in range(groups):
                        with m.Case(g):
                            for k in range(r):
                                if g * r + k < p_out:
                                    m.d.sync += gather.data[g * r + k].eq(rq.o.payload.q[k])
                m.d.sync += gather.last.eq(q_last)
            done = Signal()
            m.d.sync += done.eq(rq.o.valid & (q_grp == groups - 1))
            m.d.comb += [beat.eq(gather), ofifo.w_en.eq(done)]
