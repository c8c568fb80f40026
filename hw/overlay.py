"""OverlayEngine: one program-driven shift/MAC engine for a whole version-1 network (issue #10).

DESIGN.md §3 "Overlay", spec ``/work/v3/OVERLAY.md``. Feature maps live in four on-chip banks
(buffers X and Y, each an even- and an odd-channel bank); a layer program, written through
the parameter port with the weights, drives the engine pass after pass. A shift is only an
address offset taken from the gather table (zero cost), a replicate is the gather table
reading source channel ``i mod C``, a maxpool2 and a gap are fused into the conv that
precedes them, the last pass (``raw``) streams ``acc + bias`` as int32 logits. Nothing about a
particular model is an elaboration constant: the engine's shape is :class:`OverlayConfig`.

With ``OverlayConfig.attention`` (off by default and in the iCEBreaker build: nothing of it
is elaborated then) the engine also runs the version-2 attention ops as passes of an
attention unit (:meth:`OverlayEngine._attention`, ``docs/overlay_attention.md``):
channel_attention (op ECA), spatial_attention (op SAM) and a dynamic_conv1x1's kernel
attention (op DYN, which writes the mixed weights before its conv pass).

With ``OverlayConfig.weight_store`` (the iCEBreaker build's config) the network's weight
rows, gather entries and channel-table entries live in the feature-map banks' upper
addresses (16-bit banks, the maps in the low byte below them), the parameter port writes
them there through the maps' write request, and a COPY state before each group copies its
``cin`` weight rows (and, before a pass's first group, the pass's gather and channel
entries) into the block-RAM tables, one store row a cycle through the MAC pipeline's bank
read; groups are then never chained (``docs/boards.md``, "The weight store").

Schedule (all counts exact, :mod:`hw.overlay_timing` states them as a formula)::

    SETUP(row 0) LOAD  pass 0 | SETUP(row 1) pass 1 | ... | SETUP(END row) | SETUP(row 0) ...

    (with a weight store: every group = COPY GSTART ISSUE FLUSH [GAPLOAD GAPFLUSH])

* SETUP reads the pass's ``PASS_FIELDS`` from the program memory into registers, one field a
  cycle, and derives the few constants the address arithmetic needs.
* LOAD takes one image value per cycle into buffer X (the ``images`` stream is ready only here).
* A pass runs group after group (``P`` output channels at a time). A group visits the conv's
  output positions (raster, or window order with a fused maxpool); each position takes
  ``T = max(cin, D, 2)`` cycles, ``D = ceil(P_g / R)`` (``P_g`` on the raw classifier, whose
  logits leave one a cycle): in the first ``cin`` of them one gather entry a cycle becomes one
  feature-map read that is broadcast to the ``P`` MAC lanes. The accumulators are handed to a
  shift register when a position is complete, from which the requant units take ``R``
  channels a cycle while the lanes already accumulate the next position.

Datapath of one issued input channel ``i`` (cycle after issue: what happens, the hardware
reason for the cut):

0. gather-table read ``gbase + i`` (block RAM, synchronous); the position's base address and
   the bounds thresholds of its coordinates (``s*y + dy >= 0`` and ``dy < h - s*y`` reduced
   to small compares of ``dy``, and for x) travel beside it.
1. ``addr = pixbase + off`` (modulo the bank depth's power of two: an in-bounds address is
   exact); ``dy``, ``dx`` against the thresholds (4- and 5-bit compares, no adder).
2. in-bounds AND and the feature-map read (``SB_SPRAM256KA`` latency).
3. zero fill of out-of-bounds reads, bank select; the weight row (read 3 cycles after issue)
   arrives (on an ECP5 it is read a cycle earlier and both go into the ``MULT18X18D``'s
   input registers).
4. ``P`` products (``SB_MAC16`` 8×8 pairs with their product register on iCE40).
5. accumulate (the first product of a position loads, the others add).
6. hand-off of the ``P`` accumulators to the drain shift register.

Drain (``d`` = drain step, cycles after the hand-off ``H``): ``H+1+d`` take ``R`` lanes and
read the channel tables (bias, m, sh, qmax in ``R`` parity banks), ``+2`` ``v = acc + bias``,
``+3`` the two 16-bit halves' products ``vlo * m``, ``vhi * m`` (``v`` fits int32, the
artifact's bound), ``+4`` their sum ``p = v * m`` (on iCE40 both inside the ``SB_MAC16``
pair), ``+5`` the coarse shift (the 16-bit window of ``p`` at ``8 * ((sh - 1) >> 3)``, and
whether anything above it is set), ``+6`` the fine shift and saturation, ``+7`` round, ``+8``
clamp to ``qmax`` (DESIGN.md §1; the rounding identity of :class:`hw.requant.Requant`),
``+9`` fused running max, ``+10`` fused gap sum (a block RAM read at ``+9``) or the write
request, ``+11`` the write.
After a group with a fused gap, its ``P_g`` sums go through the same requant lanes (the
constants of channel-table entry ``gap_ent``: bias 0, the gap's m, sh, qmax) and are written
as the 1×1 map.

Hand-off rules. The MAC pipeline and the drain never stall: a position's hand-off comes ``T``
cycles after the previous one and its drain takes ``D <= T`` steps. The per-group state the
items in flight need follows them: the channel-table base steps at the hand-off of a group's
last position, the write pointers at its last write (or its gap drain's). So when every
group of a pass has ``P`` lanes (``P_g``, ``D``, ``T`` fixed) and it is not the raw pass, the
groups are *chained* (:func:`hw.overlay_timing.chain_mode`): the next group's first position
follows the last one like another position, and with a gap the previous group's gap drain
takes the ``D`` drain steps after the next group's first position's (or, when ``T < 2D``,
``cin < 10`` or ``D > 8``, the next group starts the cycle after the gap drain's start).
Otherwise, and after a pass's last group, the engine waits until nothing is in flight
(every stage's valid flag clear, after the last write). The one stall is the logits
consumer: the raw drain takes a step only with room in the :data:`LOGITS_QUEUE`-entry block
RAM queue (an always-ready consumer never holds it), a raw position starts only once the
previous one has left the drain, and a flush waits for the drain, so a stalled consumer
delays the engine but never loses or duplicates a logit.

Resources (UP5K, the iCEBreaker build's config: 8 lanes, R = 1): the registers that grow with
the lanes are the accumulators and the drain shift register; the gap sums, pool maxima,
logits queue and the requant items' per-stage data are small block RAMs; the requant
multiply's sum is inside the ``SB_MAC16`` pair; ``benchmarks/bench_overlay_fit.py`` measures
the engine alone.

The classifier sees a 1×1 map (the artifact's rule, ``models/artifact.py``), so the raw pass
has one position per group and its logits leave in class order; with several positions
*and* several groups they would leave group by group.
"""

from dataclasses import dataclass

from amaranth.hdl import (Array, C, Cat, ClockSignal, Instance, Module, Mux, Signal, signed,
                          unsigned)
from amaranth.lib import data as ldata, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .overlay_program import (DYN_HEAD, ECA_HEAD, OP_DYN, OP_ECA, OP_END, OP_SAM,
                              PASS_FIELDS, SAM_HEAD, OverlayConfig)
from .dsp import mult18x18d_registered
from .params import OVERLAY_LAYER, ParamKind, param_bus_signature
from .requant import M_BITS, SH_BITS
from .resources import Cost, MemorySpec, Multiplier
from .synth import COLLISION_FREE, collision_read
from .stream import pixel_stream

__all__ = ["OverlayEngine", "overlay_engine_cost", "program_bits", "gather_bits", "DualMac",
           "FIELD_SLOTS", "PIPE", "LOGITS_QUEUE"]

#: Program memory slots per pass (``len(PASS_FIELDS)`` rounded up to a power of two, so the
#: address is ``row << 5 | field``: no multiplier, no adder).
FIELD_SLOTS = 1 << ceil_log2(len(PASS_FIELDS))

_F = {name: n for n, name in enumerate(PASS_FIELDS)}


#: Register stages of the attention unit's multiplier beyond its product register (see
#: ``PipelineConstants.att_mul``).
_ATT_MUL = 2

#: Register stages the attention unit adds to a map-value read: its request before the
#: bank's address port, its value before the pool sum and the operand select
#: (``PipelineConstants.att_read``).
_ATT_RD = 2


@dataclass(frozen=True)
class PipelineConstants:
    """The fixed cycle counts of the engine (see :mod:`hw.overlay_timing`)."""
    setup: int = len(PASS_FIELDS) + 2   # one field a cycle, the read latency, one derive cycle
    group_start: int = 3                # P_g, then D, then T = max(cin, D, 2)
    flush: int = 17                     # last issue + 1 .. nothing in flight: + cin + D - T
    raw_flush: int = 15                 # the same for the raw pass (no S9 write stages)
    gap_sum_flush: int = 16             # the same with a gap (the sum's write at S9 is last)
    gap_load: int = 1                   # gap sums -> drain shift register
    gap_flush: int = 11                 # after the gap drain's D steps: its last write
    # the attention unit (channel_attention pass, OverlayEngine._attention). Its shared
    # multiplier is _ATT_MUL stages longer than one register: the operand register (the DSP
    # block's A/B input registers on ECP5) and the product register (its output register),
    # then the partial products' sum in att_prod; every item reaches A1 _ATT_MUL cycles later.
    att_mul: int = _ATT_MUL             # operand register, partial-product register
    att_read: int = _ATT_RD             # the read request's register, the value's (x2)
    att_init: int = 5                   # the four constant words, read latency
    att_pool_wait: int = 6 + _ATT_MUL + _ATT_RD  # last pool read .. p[C-1] written, the idle test
    att_conv_step: int = 6 + 2 * _ATT_MUL   # per channel: k taps + 6 + the tap's and z's
    #                                   multiplier stages (the LUT read, on the table's port,
    #                                   must come before the next channel's first tap read)
    att_conv_wait: int = 2              # the last a[c] write, the idle test
    att_scale_wait: int = 6 + _ATT_MUL + _ATT_RD  # last scale read .. its write, the idle test
    att_gap_slots: int = 4 + _ATT_MUL   # idle issue slots after a channel with a fused gap
    sam_init: int = 6                   # the five constant words, read latency
    sam_ctx_step: int = 7               # per channel: row bias, C products + 6 (u[c]'s
    #                                   ctx requant runs beside the next channel's reads)
    sam_ctx_wait: int = 1 + 2 * _ATT_MUL    # the last u[c]: its multiplier stages, idle test
    sam_pix_step: int = 6 + 2 * _ATT_MUL    # per pixel: 2C reads + 6 (z requant, LUT, s)
    sam_pix_wait: int = 6 + _ATT_MUL + _ATT_RD  # last scale read .. its write, the idle test
    sam_gap_slots: int = 7 + _ATT_MUL   # GAPR: idle issue slots after a channel
    sam_gap_wait: int = 2               # GAPR: the last channel's extra cycles to its write
    #                                   (the read request's register delays it, not the slots)
    dyn_fixed: int = 20 + 3 * _ATT_MUL + _ATT_RD  # DYN: INIT (4) and the waits between its phases
    dyn_gather: int = 2                 # DYN pool: the gather entry's read per channel
    dyn_row: int = 7                    # DYN: per kernel k, att_bias[k] + cin taps + 6
    dyn_div: int = 10                   # DYN: per kernel, the division (load + 9 steps)


#: The engine's constants (``hw.overlay_timing`` reads them; the RTL is built from them).
PIPE = PipelineConstants()

#: Cycles from an input channel's issue to the hand-off of its position (stages 0..6).
_HANDOFF = 6


@dataclass(frozen=True)
class DualMac(Multiplier):
    """MAC multipliers packed two per ``SB_MAC16`` (dual 8×8 mode) with ``primitives="ice40"``.

    Every lane is still one multiplier (``count`` = P); on iCE40 a pair shares one DSP block,
    so :meth:`dsp` is ``ceil(count / 2)`` there.
    """

    def dsp(self, family):
        if family == "ice40":
            return (self.count + 1) // 2
        return super().dsp(family)


def _widths(config):
    aw = max(1, ceil_log2(config.fm_words))
    return {
        "aw": aw,
        # A map dimension is at most fm_words (one value per pixel).
        "dim": aw + 1,
        "cin": ceil_log2(config.gather_rows + 1),
        "cout": ceil_log2(config.channel_rows + 1),
        # (with a weight store the program's wbase and the group's row are store rows)
        "wrow": ceil_log2((config.weight_store // 2 or config.weight_rows) + 1),
        # |w * x| <= 128 * 255 < 2**15; a sum of at most gather_rows of them.
        "acc": min(32, 16 + ceil_log2(config.gather_rows)),
        # A gap sum: at most fm_words values of at most 255.
        "gsum": 9 + aw,
    }


def _field_widths(config):
    """Register width of each program field (the program RAM stores the widest)."""
    W = _widths(config)
    aw, dim = W["aw"], W["dim"]
    widths = {"op": 1, "src": 1, "dst": 1, "h": dim, "w": dim, "stride": 2, "ho": dim,
              "wo": dim, "cin": W["cin"], "cout": W["cout"], "groups": W["cout"],
              "last_group": ceil_log2(config.lanes + 1), "gbase": W["cin"], "wbase": W["wrow"],
              "cbase": W["cout"], "src_row": aw, "src_col": aw, "pool": 1, "gap": 1,
              "gap_ent": W["cout"], "raw": 1, "out_h": dim,
              "out_w": dim, "dst_cp2": aw, "in_c": W["cin"]}
    if config.weight_store:
        # gbase, cbase, gap_ent: entries of the store (the channel tables' address is the
        # entry modulo channel_rows, where the pass's copy put it)
        widths["gbase"] = widths["cbase"] = widths["gap_ent"] = \
            ceil_log2(config.weight_store // 4 + 1)
    if config.attention:
        # An attention pass: op ECA (2) or SAM (3), k taps (ECA, k <= 9) or C (SAM) in cin,
        # its table base in cbase, C in in_c (up to channel_rows).
        widths.update(op=3, cin=max(W["cin"], W["cout"], 4),
                      cbase=max(W["cout"], ceil_log2(config.attention_rows)),
                      in_c=max(W["cin"], W["cout"]))
        if "dynamic_conv1x1" in config.attention:
            # DYN: the attention-table base in gap_ent
            widths["gap_ent"] = max(W["cout"], ceil_log2(config.attention_rows))
    return widths


def _below(value, n):
    """``value < n`` as "no bit set at or above ``ceil_log2(n)``" and, unless ``n`` is a
    power of two, a comparator on the low bits only."""
    k = ceil_log2(n)
    if k >= len(value):
        return value < n
    high_clear = value[k:] == 0
    return high_clear if n == 1 << k else high_clear & (value[:k] < n)


def _at_least(value, n):
    """``value >= n`` for a constant ``n`` (true for ``n <= 0``): the complement of
    :func:`_below`, no carry chain."""
    return C(1, 1) if n <= 0 else ~_below(value, n)


def gather_bits(config):
    """Width of a stored gather entry: bank, the offset modulo the bank depth's power of two,
    dy, dx."""
    return 1 + _widths(config)["aw"] + 8


def program_bits(config):
    """Width of the program RAM: the widest field register (address steps are kept modulo
    the bank depth's power of two, so no field needs more)."""
    return max(_field_widths(config).values())


def overlay_engine_cost(config, cycles=0):
    """Resources of :class:`OverlayEngine` for ``config``, as the RTL builds them.

    * ``P`` MAC multipliers (signed 8-bit weight × unsigned 8-bit activation); with
      ``primitives="ice40"`` they are ``P/2`` ``SB_MAC16`` in dual 8×8 mode (:class:`DualMac`).
    * ``R`` requant units, each ``(acc + bias) * m`` as two 16-bit halves (``v`` fits int32):
      the low half 16u×16u, the high half 16s×16u (one ``SB_MAC16`` each with the ice40
      primitives; Amaranth's mixed-sign product, 17s×17s, otherwise).
    * memories: the four feature-map banks, the weight rows (``P`` × 8 bits), the channel
      tables in ``R`` parity banks (bias 32 bits, m 16, sh and qmax together 14), the gather
      table (:func:`gather_bits`), the program (``max_passes × FIELD_SLOTS`` words of
      :func:`program_bits`); the small block RAMs that replace registers: the logits queue
      (:data:`LOGITS_QUEUE` × 32 bits), per requant lane the gap sums and the pool maxima
      (``P/R`` words), the requant delay line (8 words: drain step, flags, qmax per lane).
    """
    c = OverlayConfig.from_json(config)
    p, r = c.lanes, c.requant_units
    mac = Multiplier.amaranth("mac", p, 8, True, 8, False)
    if c.primitives == "ice40":
        mac = DualMac(mac.name, mac.count, mac.a_bits, mac.a_signed, mac.b_bits, mac.b_signed,
                      mac.y_bits)
    if c.primitives == "ice40":
        # SB_MAC16 instances in 16x16 mode, signed x unsigned for the high half.
        hi = Multiplier("requant.hi", r, 16, True, M_BITS, False, 16 + M_BITS)
    else:
        hi = Multiplier.amaranth("requant.hi", r, 16, True, M_BITS, False)
    mults = [mac, Multiplier.amaranth("requant.lo", r, 16, False, M_BITS, False), hi]
    # (with a weight store the banks are 16 bits wide, two lanes of a store row each, and
    # the weights table is the weight cache)
    mems = [MemorySpec(f"fm.{buf}{bank}", c.fm_words, 16 if c.weight_store else 8)
            for buf in "XY" for bank in "eo"]
    mems.append(MemorySpec("weights", c.weight_rows, 8 * p))
    depth = -(-c.channel_rows // r)
    for name, width in (("bias", 32), ("m", M_BITS), ("shq", SH_BITS + 8)):
        mems += [MemorySpec(f"{name}{b}", depth, width) for b in range(r)]
    mems.append(MemorySpec("gather", c.gather_rows, gather_bits(c)))
    mems.append(MemorySpec("program", c.max_passes * FIELD_SLOTS, program_bits(c)))
    mems.append(MemorySpec("logits_queue", LOGITS_QUEUE, 32))
    small = max(2, p // r)
    mems += [MemorySpec(f"gsum{b}", small, _widths(c)["gsum"]) for b in range(r)]
    mems += [MemorySpec(f"poolmax{b}", small, 8) for b in range(r)]
    mems.append(MemorySpec("requant_delay", 8, ceil_log2(p + 1) + 4 + 8 * r))
    if c.attention:
        # The attention unit (OverlayEngine._attention): one multiplier, 33s x 16u, shared
        # by the pool requant, the kernel taps, the z requant, the scale and a fused gap's
        # requant (one use a cycle); the attention table and the per-channel p and a.
        mults.append(Multiplier.amaranth("attention", 1, 33, True, M_BITS, False))
        mems += [MemorySpec("attention", c.attention_rows, 32),
                 MemorySpec("att_p", c.channel_rows, 8), MemorySpec("att_a", c.channel_rows, 9)]
    return Cost(cycles=cycles, multipliers=mults, memories=mems)


class _ReadView:
    """A read port's ``addr`` and ``en``, with the data :func:`~shiftacc.hw.synth.collision_read`
    gives (the port's own outside the tests' poison)."""

    def __init__(self, rp, data):
        self.addr, self.en, self.data = rp.addr, rp.en, data


#: Entries of the logits queue (a block RAM): the raw drain takes a step only with room for
#: it; a step is written into the queue 2 cycles later, readable the cycle after (the read
#: is not transparent) and out the cycle after that, so at most 4 steps are outstanding when
#: the next one is decided and 8 never holds an always-ready consumer.
LOGITS_QUEUE = 8


class OverlayEngine(wiring.Component):
    """The overlay engine (spec §2, §3, §6): program-driven conv1x1 passes over on-chip maps.

    Parameters
    ----------
    config : OverlayConfig or dict
    act_bits_max : int
        Widest activation the feature-map banks hold (8).

    Attributes
    ----------
    params : In(param_bus_signature())
        Parameter beats with ``layer`` = 0xFF (PROGRAM, GATHER, WEIGHT, BIAS, M, SH, QMAX;
        with a weight store all but PROGRAM go to the store in the banks); other layers are
        ignored. Load while no image is in flight.
    images : In(pixel_stream(1, 8))
        One value a beat, raster then channel order; the size is pass 0's ``h``, ``w``,
        ``in_c`` (read from the program).
    logits : Out(pixel_stream(1, 32, is_signed=True))
        The classifier's ``acc + bias`` in channel order, ``last`` on the last class.
    """

    def __init__(self, config=None, act_bits_max=8):
        self.config = OverlayConfig() if config is None else OverlayConfig.from_json(config)
        if not (isinstance(act_bits_max, int) and 1 <= act_bits_max <= 8):
            raise ValueError(f"OverlayEngine: act_bits_max must be an integer in [1, 8] (the "
                             f"feature-map banks are 8 bits wide), got {act_bits_max!r}")
        self.act_bits_max = act_bits_max
        self.lanes = self.config.lanes
        self.requant_units = self.config.requant_units
        self.fifo_depth = LOGITS_QUEUE
        super().__init__({
            "params": In(param_bus_signature()),
            "images": In(pixel_stream(1, 8)),
            "logits": Out(pixel_stream(1, 32, is_signed=True)),
        })

    def cost(self, cycles=0):
        """:func:`overlay_engine_cost` of this engine's config."""
        return overlay_engine_cost(self.config, cycles)

    # --- memories ---------------------------------------------------------------------------

    def _ram(self, m, name, width, depth, granularity=None, collision_free=False):
        """A simple dual-port block RAM: one write port, one synchronous read port
        (``collision_free``: marked :data:`~shiftacc.hw.synth.COLLISION_FREE`)."""
        mem = memory.Memory(shape=unsigned(width), depth=depth, init=[],
                            attrs=COLLISION_FREE if collision_free else None)
        m.submodules[name] = mem
        wp = mem.write_port(granularity=granularity)
        rp = mem.read_port(domain="sync")
        if collision_free:
            rp = _ReadView(rp, collision_read(m, rp, [wp]))
        return wp, rp

    def _fm_bank(self, m, name, aw, bytes_=None):
        """One single-port feature-map bank (``SB_SPRAM256KA`` semantics: one read or one write
        a cycle, read data one cycle after the address). Returns (addr, wdata, we, rdata,
        dout, wdatah): ``dout`` is the whole word read (16 bits with a weight store, whose
        rows use both bytes; the maps use the low byte). With a weight store ``wdatah`` is
        the high byte's write data and ``bytes_`` (2 bits, low byte first) the bytes a write
        takes (the ``SB_SPRAM256KA``'s nibble mask)."""
        addr = Signal(aw, name=f"{name}_addr")
        wdata = Signal(8, name=f"{name}_wdata")
        we = Signal(name=f"{name}_we")
        rdata = Signal(8, name=f"{name}_rdata")
        store = bool(self.config.weight_store)
        dout = Signal(16 if store else 8, name=f"{name}_dout")
        wdatah = Signal(8, name=f"{name}_wdatah")
        if self.config.primitives == "ice40":
            dout16 = Signal(16, name=f"{name}_dout16")
            m.submodules[name] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr, i_DATAIN=Cat(wdata, wdatah if store else C(0, 8)),
                i_MASKWREN=(Cat(bytes_[0], bytes_[0], bytes_[1], bytes_[1]) if store
                            else C(0b0011, 4)),
                i_WREN=we, i_CHIPSELECT=C(1, 1), i_CLOCK=ClockSignal(), i_STANDBY=C(0, 1),
                i_SLEEP=C(0, 1), i_POWEROFF=C(1, 1), o_DATAOUT=dout16)
            m.d.comb += dout.eq(dout16[:len(dout)])
        else:
            mem = memory.Memory(shape=unsigned(len(dout)), depth=self.config.fm_words, init=[])
            m.submodules[name] = mem
            wp = mem.write_port(granularity=8 if store else None)
            rp = mem.read_port(domain="sync")
            m.d.comb += [wp.addr.eq(addr), wp.data.eq(Cat(wdata, wdatah) if store else wdata),
                         wp.en.eq(Cat(we & bytes_[0], we & bytes_[1]) if store else we),
                         rp.addr.eq(addr), dout.eq(rp.data)]
        m.d.comb += rdata.eq(dout[:8])
        return addr, wdata, we, rdata, dout, wdatah

    # --- elaboration ------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        P, R = cfg.lanes, cfg.requant_units
        W = _widths(cfg)
        aw, dim = W["aw"], W["dim"]
        acc_bits, gsum_bits = W["acc"], W["gsum"]
        sw = max(acc_bits, gsum_bits + 1)          # drain shift register (signed)
        nf = len(PASS_FIELDS)
        qtop = (1 << self.act_bits_max) - 1
        # On an ECP5 (the generic primitives, ``platform.family == "ecp5"``) the MAC products
        # are instantiated MULT18X18D with their input and output registers (hw/dsp.py), and
        # the depth-8 memories (logits queue, gap sums, pool maxima, requant delay line) are
        # left to Yosys (LUT RAM there): a DP16KD's ~5.8 ns clock-to-out into fabric logic
        # was the ULX3S-12F build's critical path, and they were 6 of its 32 DP16KD. On the
        # UP5K they stay block RAM (its EBRs are free, its logic cells are not).
        ecp5 = cfg.primitives == "generic" and getattr(platform, "family", None) == "ecp5"
        small_attrs = {} if ecp5 else {"ram_style": "block"}

        # ---- pass registers (the program row), widths by field ----
        fw = _field_widths(cfg)
        f = {name: Signal(fw[name], name=f"f_{name}") for name in PASS_FIELDS}

        # ---- parameter port -> memories ----
        # Two stages. Stage 1 registers the beat: its row, lane and data bits (every cycle,
        # no enable: stage 2 reads them the cycle after), ``valid & layer == 0xFF``, and the
        # wide compares as one flip-flop each (kind == K per kind used; "no bit above the
        # capacity's" and a narrow comparator for each range check on row and lane). Stage 2
        # forms the tables' write enables from those flip-flops (an AND of a few of them and
        # a compare of the 3-bit lane: two LUT levels) and writes. One cycle of write latency,
        # as when stage 1 was the whole decode into one flip-flop per write enable: that
        # decode (7 LUT levels from the link's parameter register, ``params.valid`` ->
        # ``param_hit_weight*``) was the whole iCEBreaker build's critical path at seed 1
        # (26.2 ns). Parameters are written while no image is in flight, and a PROGRAM (or,
        # with a weight store, a store) word in stage 2 holds the image back like a
        # completed one (``prog_dirty``, ``param_hold``).
        bus = self.params.payload
        row_bits = max(1, ceil_log2(max(cfg.max_passes, cfg.gather_rows, cfg.weight_rows,
                                        cfg.weight_store,
                                        cfg.channel_rows,
                                        cfg.attention_rows if cfg.attention else 1)))
        lane_bits = max(1, ceil_log2(max(FIELD_SLOTS, P)))
        pp = Signal(ldata.StructLayout({"row": row_bits, "lane": lane_bits, "data": 32}),
                    name="param_q", reset_less=True)
        m.d.sync += [pp.row.eq(bus.row[:row_bits]), pp.lane.eq(bus.lane[:lane_bits]),
                     pp.data.eq(bus.data)]
        pv0 = Signal(name="param_v")
        m.d.sync += pv0.eq(self.params.valid & (bus.layer == OVERLAY_LAYER))
        pflags = {}

        def pflag(name, expr):
            """A stage-1 flip-flop of a compare of the bus (one per distinct compare)."""
            if name not in pflags:
                q = Signal(name=f"param_{name}", reset_less=True)
                m.d.sync += q.eq(expr)
                pflags[name] = q
            return pflags[name]

        def is_kind(k):
            return pflag(f"k_{k.name.lower()}", bus.kind == k)

        def row_below(n):
            return pflag(f"row_lt{n}", _below(bus.row, n))

        def lane_below(n):
            return pflag(f"lane_lt{n}", _below(bus.lane, n))

        def lane_is(lane):
            return lane_below(1 << lane_bits) & (pp.lane == lane)

        def param_hit(name, cond):
            """Stage 2: ``valid & cond`` from stage 1's flip-flops, a table's write enable."""
            q = Signal(name=f"param_hit_{name}")
            m.d.comb += q.eq(pv0 & cond)
            return q

        ch_ok = row_below(cfg.channel_rows)

        # Every field is at most program_bits wide: the program RAM stores no more.
        # The parameter tables are COLLISION_FREE (hw/synth.py) while only the parameter port
        # writes them: it writes only while no image is in flight (the port's rule), when
        # their reads are idle and ignored, and the program's SETUP is re-run after any
        # program write since it began (``prog_dirty``), before an image is taken. (A dynamic
        # conv's pass writes the weights and biases itself: those stay read-first.)
        pfree = "dynamic_conv1x1" not in cfg.attention
        prog_w, prog_r = self._ram(m, "program", program_bits(cfg), cfg.max_passes * FIELD_SLOTS,
                                   collision_free=True)
        prog_cond = (is_kind(ParamKind.PROGRAM) & lane_below(nf)
                     & row_below(cfg.max_passes))
        m.d.comb += [prog_w.addr.eq(Cat(pp.lane[:ceil_log2(FIELD_SLOTS)], pp.row)),
                     prog_w.data.eq(pp.data),
                     prog_w.en.eq(param_hit("program", prog_cond))]
        prog_dirty = Signal()      # a PROGRAM word arrived since SETUP of row 0 began

        # The gather entry keeps the offset modulo 2**aw only (the address arithmetic is
        # modulo the bank's power of two): bank, off[aw], dy, dx.
        gat_w, gat_r = self._ram(m, "gather", gather_bits(cfg), cfg.gather_rows,
                                 collision_free=True)
        # (with a weight store the gather entries go to the store and the table is written
        # by the pass's copy, below)
        if not cfg.weight_store:
            m.d.comb += [gat_w.addr.eq(pp.row),
                         gat_w.data.eq(Cat(pp.data[0], pp.data[1:1 + aw], pp.data[21:29])),
                         gat_w.en.eq(param_hit("gather", is_kind(ParamKind.GATHER)
                                               & row_below(cfg.gather_rows)))]

        # A dynamic conv's attention pass writes its mixed weights and biases (only with
        # "dynamic_conv1x1" in cfg.attention): a second source for the weights' and the bias
        # tables' write ports.
        dynw = None
        if "dynamic_conv1x1" in cfg.attention:
            dynw = {"wwe": Signal(name="dyn_wwe"), "wrow": Signal(W["wrow"], name="dyn_wrow"),
                    "wlane": Signal(range(P), name="dyn_wlane"),
                    "wdata": Signal(8, name="dyn_wdata"), "bwe": Signal(name="dyn_bwe"),
                    "bent": Signal(W["cout"] + 1, name="dyn_bent"),
                    "bdata": Signal(32, name="dyn_bdata")}
        wt_w, wt_r = self._ram(m, "weights", 8 * P, cfg.weight_rows, granularity=8,
                               collision_free=pfree)
        # With a weight store the table is the weight cache: written only by the copy
        # before a group (below, from the banks), read only while no copy runs.
        store = bool(cfg.weight_store)
        if dynw is None and not store:
            m.d.comb += [wt_w.addr.eq(pp.row), wt_w.data.eq(Cat(*[pp.data[:8]] * P))]
        elif not store:
            m.d.comb += [wt_w.addr.eq(Mux(dynw["wwe"], dynw["wrow"], pp.row)),
                         wt_w.data.eq(Cat(*[Mux(dynw["wwe"], dynw["wdata"], pp.data[:8])] * P))]
        for lane in range(0 if store else P):
            pen = param_hit(f"weight{lane}", is_kind(ParamKind.WEIGHT) & lane_is(lane)
                            & row_below(cfg.weight_rows))
            if dynw is not None:
                pen = Mux(dynw["wwe"], dynw["wlane"] == lane, pen)
            m.d.comb += wt_w.en[lane].eq(pen)

        cdepth = -(-cfg.channel_rows // R)
        tables = {}
        tables_w = {}
        # sh (6 bits) and qmax (8 bits) share one 14-bit RAM (one block RAM instead of two on
        # iCE40), written by 2-bit chunks: sh in chunks 0..2, qmax in chunks 3..6.
        for name, width in (("bias", 32), ("m", M_BITS), ("shq", SH_BITS + 8)):
            ports = []
            for b in range(R):
                wp, rp = self._ram(m, f"{name}{b}", width, cdepth,
                                   collision_free=pfree or name != "bias",
                                   granularity=2 if name == "shq" else None)
                row_b = pp.row[1:] if R == 2 else pp.row
                hit = ((pp.row[0] == b) if R == 2 else C(1, 1)) & ch_ok
                m.d.comb += wp.addr.eq(row_b)
                if cfg.weight_store:
                    # (written by the pass's copy from the store, below)
                    tables_w.setdefault(name, []).append(wp)
                elif name == "shq":
                    sh_hit = param_hit(f"sh{b}", hit & is_kind(ParamKind.SH))
                    qm_hit = param_hit(f"qmax{b}", hit & is_kind(ParamKind.QMAX))
                    m.d.comb += [wp.data.eq(Cat(pp.data[:SH_BITS], pp.data[:8])),
                                 wp.en.eq(Mux(sh_hit, 0b0000111, 0) | Mux(qm_hit, 0b1111000, 0))]
                else:
                    kd = ParamKind.BIAS if name == "bias" else ParamKind.M
                    m.d.comb += [wp.data.eq(pp.data[:width]),
                                 wp.en.eq(param_hit(f"{name}{b}", hit & is_kind(kd)))]
                if name == "bias" and dynw is not None:
                    # (later statements win: the DYN pass's write of entry bent)
                    e = dynw["bent"]
                    with m.If(dynw["bwe"]):
                        m.d.comb += [wp.addr.eq(e[1:] if R == 2 else e),
                                     wp.data.eq(dynw["bdata"]),
                                     wp.en.eq((e[0] == b) if R == 2 else 1)]
                ports.append(rp)
            tables[name] = ports

        # ---- feature-map banks: bank (buf, parity), buf 0 = X, 1 = Y ----
        # (weight store) the bytes a write takes: the low one (maps) unless a parameter
        # word's (a weight's byte, a gather entry's two)
        wq_bytes = Signal(2, init=0b01)
        banks = {(buf, par): self._fm_bank(m, f"fm_{'XY'[buf]}{par}", aw, wq_bytes)
                 for buf in range(2) for par in range(2)}
        # Write request (registered): LOAD, the pass's output and (with a weight store) the
        # parameter port's weight words share it.
        wq_en = Signal(2)
        wq_addr = Signal(aw)
        wq_data = [Signal(8, name=f"wq_data{b}") for b in range(2)]
        wq_datah = [Signal(8, name=f"wq_datah{b}") for b in range(2)]
        wq_buf = Signal()
        rd_addr = Signal(aw)       # the MAC side's read address (stage 2)
        for (buf, par), (addr, wdata, we, _, _, wdatah) in banks.items():
            write = wq_en[par] & (wq_buf == buf)
            m.d.comb += [we.eq(write), wdata.eq(wq_data[par]), wdatah.eq(wq_datah[par]),
                         addr.eq(Mux(write, wq_addr, rd_addr))]
        m.d.sync += wq_en.eq(0)
        # store row bits: weight row r at store row r, gather entry e at weight_store/2 + e
        wsb = ceil_log2(cfg.weight_store) if store else 0
        # The store's rows are the banks' top weight_store addresses: row r at
        # fm_words - weight_store + r, the row's bits below a constant (no adder).
        store_top = C(cfg.fm_words // cfg.weight_store - 1, aw - wsb) if store else None
        copying = Signal()     # (weight store) COPY: ck's store row is read
        cph = Signal(2)        # (weight store) COPY's phase: 2 gather, 1 channel, 0 weights
        ck = Signal(max(W["cin"], W["cout"]) + 1)   # (weight store) COPY's counter
        # (weight store) the phase's last cycle, a register set a cycle ahead from ck's
        # compare with cout + 1 (the channel phase's cout + 3 entries) or cin - 2: the
        # compare of ck with a mux of the two ends was in front of the phase register's
        # enable and the FSM's next state (the first UP5K builds' critical path at seeds 2-3)
        clast = Signal()
        cout1 = Signal(len(ck))
        cinm2 = Signal(len(ck))
        if store:
            # before COPY (a pass's gather phase, a group's weights: cin cycles each)
            with m.If(~copying):
                m.d.sync += clast.eq(f["cin"] == 1)
            # The parameter words of the store, decoded like the tables' (stage 1: one
            # flip-flop per kind, pp holds row, lane and data), then (stage 2) into the write
            # request's registers, the bank written the cycle after: three cycles from the
            # bus (the decode went from the link's parameter register straight into the
            # write request's muxes: the first UP5K build's critical path, 30.8 MHz).
            # Parameters are written while no image is in flight, and a store word on its
            # way holds the image back (``param_hold`` in ``load_gate``, as a program word), so
            # LOAD's and a pass's writes never meet them.
            # A WEIGHT word (row r, lane l): bank l >> 1 (X even, X odd, Y even, Y odd), byte
            # l & 1, at store row r.
            # A GATHER word (entry e): its 23 bits (bank, offset mod 2**aw, dy, dx, as the
            # table holds them) in banks X even (bits 0-15) and X odd (16-22), both bytes, at
            # store row weight_store/2 + e.
            # A channel entry e (BIAS, M, SH, QMAX): one 64-bit store row at 3/4
            # weight_store + e, bias in banks X even and X odd, m in Y even, sh and qmax in
            # Y odd's low and high bytes.
            m.d.sync += wq_bytes.eq(0b01)
            half = row_below(cfg.weight_store // 2)
            quarter = row_below(cfg.weight_store // 4)
            s_w = param_hit("st_w", is_kind(ParamKind.WEIGHT) & lane_below(P) & half)
            s_g = param_hit("st_g", is_kind(ParamKind.GATHER) & quarter)
            s_b = param_hit("st_b", is_kind(ParamKind.BIAS) & quarter)
            s_m = param_hit("st_m", is_kind(ParamKind.M) & quarter)
            s_s = param_hit("st_s", is_kind(ParamKind.SH) & quarter)
            s_q = param_hit("st_q", is_kind(ParamKind.QMAX) & quarter)
            d = pp.data
            qrow = pp.row[:wsb - 2]
            gent = Cat(d[0], d[1:1 + aw], d[21:29])
            caddr = Cat(qrow, C(0b11, 2), store_top)
            with m.If(s_w):
                m.d.sync += [wq_en.eq(Mux(pp.lane[1], 0b10, 0b01)), wq_buf.eq(pp.lane[2]),
                             wq_bytes.eq(Mux(pp.lane[0], 0b10, 0b01)),
                             wq_addr.eq(Cat(pp.row[:wsb - 1], C(0, 1), store_top)),
                             wq_data[0].eq(d[:8]), wq_data[1].eq(d[:8]),
                             wq_datah[0].eq(d[:8]), wq_datah[1].eq(d[:8])]
            with m.If(s_g):
                m.d.sync += [wq_en.eq(0b11), wq_buf.eq(0), wq_bytes.eq(0b11),
                             wq_addr.eq(Cat(qrow, C(0b10, 2), store_top)),
                             wq_data[0].eq(gent[:8]), wq_datah[0].eq(gent[8:16]),
                             wq_data[1].eq(gent[16:24]), wq_datah[1].eq(0)]
            with m.If(s_b):
                m.d.sync += [wq_en.eq(0b11), wq_buf.eq(0), wq_bytes.eq(0b11), wq_addr.eq(caddr),
                             wq_data[0].eq(d[:8]), wq_datah[0].eq(d[8:16]),
                             wq_data[1].eq(d[16:24]), wq_datah[1].eq(d[24:32])]
            with m.If(s_m):
                m.d.sync += [wq_en.eq(0b01), wq_buf.eq(1), wq_bytes.eq(0b11), wq_addr.eq(caddr),
                             wq_data[0].eq(d[:8]), wq_datah[0].eq(d[8:16])]
            with m.If(s_s | s_q):
                m.d.sync += [wq_en.eq(0b10), wq_buf.eq(1), wq_addr.eq(caddr),
                             wq_bytes.eq(Mux(s_s, 0b01, 0b10)),
                             wq_data[1].eq(d[:8]), wq_datah[1].eq(d[:8])]

        # ---- control registers ----
        row = Signal(range(max(cfg.max_passes, 2)))
        fcnt = Signal(range(nf + 2))
        # fcnt == nf + 1 (SETUP's last cycle) as a register set from fcnt == nf: its
        # compare was in front of the counters' clears and the FSM's next state (seed 3)
        setup_end = Signal()
        grp = Signal(W["cout"])
        pg = Signal(ceil_log2(P + 1))             # P_g: lanes of this group
        pgm1 = Signal(ceil_log2(P + 1))           # P_g - 1
        dsteps = Signal(ceil_log2(P + 1))         # D: drain steps per position
        tper = Signal(max(W["cin"], ceil_log2(P + 1)))   # (width of T = max(cin, D, 2))
        gs = Signal(2)
        idle = Signal()     # nothing in flight: no issue, drain step, requant item, write
        last_grp = Signal()
        grow = Signal(W["wrow"])                  # weight row of this group's channel 0
        # The per-group state the drain and the write stage need follows the items, so that
        # a group may start while the previous one is still in flight (chained groups):
        # cebase steps at the hand-off of a group's last position, gptr and wptr at its last
        # write (or its gap drain's last write).
        cebase = Signal(W["cout"])                # channel entry of the next hand-off's lane 0
        gptr = Signal(aw)                         # dst address of the written group's channel 0
        wptr = Signal(aw)                         # dst address of the written output pixel
        # Chained groups (hw.overlay_timing.chain_mode): every group of the pass has P lanes
        # (so P_g, D, T do not change under the previous group's drain) and it is not the raw
        # pass (its logits' last flag reads the group counter). Without a gap the next group
        # follows the last position like another position. With a gap, either (gchain) the
        # same, and the previous group's gap drain takes the D drain steps after the next
        # group's first position's (T >= 2D leaves them free before its second hand-off;
        # cin >= 10 puts them after the previous group's last gap-sum read and write;
        # D <= 8 puts their reads before the first position's gap-sum writes; >= 2
        # positions a group puts them before the last group's own tail), or it follows
        # GAPLOAD, the gap drain being over by its first hand-off (cin + 6 >= D).
        chain = Signal()
        gchain = Signal()
        gpend = Signal()    # gchain: the last hand-off was a group's last position
        gfire = Signal()    # gchain: this drain is a group's first: the gap drain follows it
        dfull = -(-P // R)                       # D of a group of P lanes
        grow_n = Signal.like(grow)               # (one adder for both group steps)
        m.d.comb += grow_n.eq(grow + f["cin"])
        # Derived while SETUP captures the fields (adders kept out of the per-position path;
        # one shared decrementer and one shared halving decrementer on the program RAM's
        # read data instead of one adder per derived register).
        rc = Signal(aw)     # src_row - src_col
        cr = Signal(aw)     # src_col - src_row
        rstep = Signal(aw)  # the pixel base step of a row of positions (2 src_row with a pool)
        # Last-index registers (n - 1), so that no end-of-count test has an adder in front of
        # its comparator (the iCE40 critical path was wo - 1 -> last_pos).
        m1 = {name: Signal(fw[name], name=f"m1_{name}")
              for name in ("w", "h", "cin", "groups", "in_c")}
        xlast = Signal(dim)     # last x: wo - 1, or wo/2 - 1 (window index) with a pool
        ylast = Signal(dim)
        # T - 2 (T >= 2): tend's next value after a step of t is ``t == tpm2``, a compare of
        # the counter itself (``t + 1 == T - 1`` put t's 11-cell carry chain in front of the
        # compare: the whole iCEBreaker build's critical path at seed 3, 25.7 ns)
        tpm2 = Signal.like(tper)
        dsm1 = Signal.like(dsteps)
        # D - 2, one bit wider (D = 1 gives a value above every drain index): the drain's
        # last-step flag's next value after a step is ``dr_d == dsm2``, no adder.
        dsm2 = Signal(len(dsteps) + 1)
        dr_d = Signal(range(P + 1))     # the drain's step index (below)
        # dr_d == dsm1 as a register kept up to date with dr_d (and dsm1, at GSTART, when
        # the drain is idle): the compare was in series with gfire and the step in front of
        # dr_act's enable and ent's next value (dr_d -> gfire -> dr_act -> ent, and
        # dsm1 -> gfire -> chain_next -> dr_act, the iCEBreaker's critical paths at seed 2).
        # dr_d = dsm1 = 0 at reset.
        dr_last = Signal(init=1)
        m.d.comb += last_grp.eq(grp == m1["groups"])
        # The group decisions of ISSUE, FLUSH, GAPLOAD and GAPFLUSH as registers, a cycle
        # behind their inputs: the group counter's compare with m1_groups and the chain
        # flags' AND were in front of grow's, grp's and the FSM's clock enables (the whole
        # UP5K build's critical path at seed 2). They are never read stale: grp, chain,
        # gchain and the fields change at least two cycles before a read (after a chained
        # next_group the next advance is T >= 2 cycles later; GSTART takes 3 cycles before
        # ISSUE; FLUSH is entered without a group step). GSTART's P_g (right after SETUP's
        # or a group's step) keeps the compare itself; the logits' last flag reads the
        # register too (the raw pass is never chained: its drain is over before grp steps).
        last_grp_r = Signal()
        # ISSUE: this is the last position and the next group follows it (last_pos_r folded
        # in: at the advance the chained step is an AND of tend and one flip-flop; tend ->
        # adv -> last_pos_r & chain_next -> grow's clock enable was the UP5K engine's
        # critical path at seed 2); set below, with last_pos_r
        chain_next = Signal()
        chain_gap = Signal()      # GAPLOAD: chain to the next group (not the last)
        gap_chain_go = Signal()   # in GAPLOAD with chain_gap (set by FLUSH, below)
        m.d.sync += gap_chain_go.eq(0)
        m.d.sync += [last_grp_r.eq(last_grp),
                     chain_gap.eq(chain & ~last_grp)]

        # LOAD counters
        # The channel, x and y of LOAD are counters of their own (not the issue counters
        # t, x, y, which LOAD never overlaps): the image stream's accept (FSM state, ready,
        # valid) was in front of the issue counters' wide next-value muxes (the UP5K
        # build's critical path at seed 1).
        lk = Signal(aw + 1)     # slot of the value: (y*W + x) * Cp + c; bank lk[0], address lk >> 1
        lstarted = Signal()
        in_load = Signal()      # the FSM is in LOAD (set and cleared with its transitions)
        # A program write since SETUP began (or one still in the parameter port's stage 2)
        # sends LOAD back to SETUP before the image's first value is taken.
        load_gate = Signal()
        # param_hold: a PROGRAM word (with a weight store, any store word: its write request
        # comes after the cycle LOAD's first value would take it) in stage 2, of any range
        # (an out-of-range word only re-runs SETUP). A flip-flop of its own from the bus's
        # valid, layer and kind, placed by the image's accept: ``param_v``, shared with
        # every table's write enable, was placed across the die from it (param_v ->
        # load_gate -> ready -> the load counters' enables, 23.6 ns, the UP5K engine's
        # critical path at seed 3).
        pld = Signal(name="param_hold")
        hold_kinds = ((ParamKind.PROGRAM, ParamKind.WEIGHT, ParamKind.GATHER, ParamKind.BIAS,
                       ParamKind.M, ParamKind.SH, ParamKind.QMAX) if store
                      else (ParamKind.PROGRAM,))
        m.d.sync += pld.eq(self.params.valid & (bus.layer == OVERLAY_LAYER)
                           & bus.kind.as_value().matches(*[k.value for k in hold_kinds]))
        m.d.comb += load_gate.eq((prog_dirty | pld) & ~lstarted)
        lt = Signal.like(tper, name="ld_t")
        lx = Signal(dim, name="ld_x")
        ly = Signal(dim, name="ld_y")
        # t == in_c - 1, x == w - 1, y == h - 1 as registers kept up to date with the
        # counters (set from the "n - 1" value as SETUP derives it, with t = x = y = 0 at
        # its end, then from each counter's next value): no comparator between the counters
        # and the counters' enables or the FSM's next state (counter == m1 -> counter
        # updates -> next state was the UP5K build's critical path at seeds 1-2).
        ltl = Signal()
        lxl = Signal()
        lyl = Signal()
        lflag = {"in_c": ltl, "w": lxl, "h": lyl}
        # Their next values are compares of the counter itself (not of counter + 1, whose
        # adder and the compare's reduction were the next path, seed 2) with n - 2, and at
        # a wrap n - 1 == 0: registers derived with the "n - 1" ones.
        lm2 = {name: Signal(fw[name], name=f"m2_{name}") for name in lflag}
        lz = {name: Signal(name=f"z_{name}") for name in lflag}
        # ltl & lxl & lyl (the next value is the image's last) as a register of its own,
        # from the flags' next values: the three-way AND was in series with the accept in
        # front of ``in_load``'s enable and the FSM's next state (prog_dirty -> load_gate
        # -> ready -> accept & ltl & lxl & lyl -> in_load, the iCEBreaker's critical path at
        # seed 3). It is read only in LOAD; SETUP sets it at its last cycle, where in_c's
        # flags are derived (w's and h's are by then).
        lall = Signal(name="ld_last")
        assert _F["in_c"] + 2 == nf + 1 and max(_F["w"], _F["h"]) + 2 <= nf

        # issue counters
        t = Signal.like(tper)
        # t == 0 and t == T - 1 as registers kept up to date with t (T - 1 >= 1, so both
        # are clear after t + 1 == T - 1 and known at every t <- 0): no comparator in front
        # of the advance, the clock enable of every position counter
        t0 = Signal()
        tend = Signal()
        # t < cin (an issue slot) and t == cin - 1 (the position's last issue) as registers
        # kept up to date with t (t <- 0: cin >= 1; a step: "still below" unless t was the
        # last): no carry-chain compare in front of the issue flag (v1, the gather read and
        # the idle look-ahead)
        tin = Signal()
        tcl = Signal()
        # cin - 2 for tcl's next value after a step, one bit wider (cin = 1: above every t)
        cinm2_t = Signal(len(tper) + 1)
        x = Signal(dim)
        y = Signal(dim)
        mm = Signal(2)
        pix = Signal(aw)
        rowb = Signal(aw)

        # logits queue: the 32-bit logits in a block RAM (2 EBRs, free on the UP5K, where
        # 4 x 33 register bits were ~130 logic cells), the last flags in registers. The RAM's
        # read is synchronous: its address is the read pointer after this cycle's take. It is
        # not transparent (Yosys would add a register and a bypass mux per bit): an entry
        # counts as queued one cycle after its write.
        LQ = self.fifo_depth
        # COLLISION_FREE (hw/synth.py: no read-first emulation on iCE40): the head is read at
        # the entry being written only while the queue is empty (``lq_n`` counts an entry
        # from the second cycle after its write, when the head has been read again), and
        # ``inflight < LQ`` keeps the writes off the entries queued.
        lq_mem = memory.Memory(shape=unsigned(32), depth=LQ, init=[],
                               attrs={**small_attrs, **COLLISION_FREE})
        m.submodules.logits_queue = lq_mem
        lq_wp = lq_mem.write_port()
        lq_rp = lq_mem.read_port(domain="sync")
        lq_rp = _ReadView(lq_rp, collision_read(m, lq_rp, [lq_wp]))
        lq_last = Array(Signal(name=f"lq_last{j}") for j in range(LQ))
        lq_w = Signal(range(LQ))
        lq_r = Signal(range(LQ))
        lq_n = Signal(range(LQ + 1))
        inflight = Signal(range(LQ + 1))    # raw drain steps taken, logits not yet out
        lq_push = Signal()
        lq_data = Signal(33)
        raw_step = Signal()
        taken = Signal()
        m.d.comb += [self.logits.valid.eq(lq_n != 0),
                     self.logits.payload.data[0].eq(lq_rp.data),
                     self.logits.payload.last.eq(lq_last[lq_r]),
                     taken.eq(self.logits.valid & self.logits.ready)]
        lq_r_next = Signal.like(lq_r)
        m.d.comb += [lq_r_next.eq(Mux(taken, Mux(lq_r == LQ - 1, 0, lq_r + 1), lq_r)),
                     lq_rp.addr.eq(lq_r_next),
                     lq_wp.addr.eq(lq_w), lq_wp.data.eq(lq_data[:32]), lq_wp.en.eq(lq_push)]
        with m.If(lq_push):
            m.d.sync += [lq_last[lq_w].eq(lq_data[32]),
                         lq_w.eq(Mux(lq_w == LQ - 1, 0, lq_w + 1))]
        m.d.sync += lq_r.eq(lq_r_next)
        lq_pushed = Signal()     # written last cycle: readable from this cycle on
        # raw_full: the raw pass's drain must hold (``f.raw & (inflight >= LQ)``), as a
        # flip-flop: the drain step decision then starts at two flip-flops (dr_act,
        # raw_full) instead of a compare behind f_raw's wide fan-out (f_raw -> dstep ->
        # gap_go -> the drain's registers was the iCEBreaker's critical path at seed 1). It
        # takes the f_raw of the cycle before; f_raw changes only in SETUP, with the drain
        # idle, and the first drain step comes cycles later (the MAC pipeline fills first).
        inflight_n = Signal.like(inflight)
        raw_full = Signal()
        m.d.comb += inflight_n.eq(inflight + raw_step - taken)
        m.d.sync += [lq_pushed.eq(lq_push), lq_n.eq(lq_n + lq_pushed - taken),
                     inflight.eq(inflight_n),
                     # (without this cycle's take: the logits queue's count -> valid ->
                     # taken -> inflight_n -> raw_full was the UP5K engine's critical path at
                     # seed 2; it holds the drain a cycle longer only with the queue full, which
                     # an always-ready consumer never makes it: no cycle changes then)
                     # (inflight + raw_step >= LQ without the adder: its carry chain and the
                     # compare's were the next path)
                     raw_full.eq(f["raw"] & (_at_least(inflight, LQ)
                                             | ((inflight == LQ - 1) & raw_step)))]
        busy = Signal()         # a position in the MAC pipeline or the drain
        drain_busy = Signal()   # the drain (and the logits' last stages) still working

        # issue outputs (stage 0)
        iss = Signal()
        iss_first = Signal()
        iss_last = Signal()
        last_pos = Signal()
        last_pos_r = Signal()  # last_pos, one cycle ahead of the advance (below)
        first_pos = Signal()
        adv = Signal()         # last cycle of a position: step to the next one
        start_pos = Signal()   # GSTART: the group's first position

        m.d.comb += prog_r.addr.eq(Cat(fcnt[:ceil_log2(FIELD_SLOTS)], row))

        # gap drain trigger (from the FSM)
        gap_go = Signal()
        # attention unit (only with cfg.attention): its read of the source map, its start
        # and its end
        att_rd = Signal()
        att_raddr = Signal(aw)
        att_start = Signal()
        att_done = Signal()
        att_gat = Signal()                  # DYN: the unit reads the gather table
        att_gaddr = Signal(W["cin"] + 1)

        # With a weight store every group starts with COPY (its rows into the cache), and
        # groups are never chained (the copy needs the banks: the previous group's writes
        # must be over).
        gstart = "COPY" if store else "GSTART"
        data = prog_r.data          # SETUP: the program field read the cycle before
        dec = Signal(len(data))     # SETUP: the shared decrementer's result (below)
        with m.FSM(init="SETUP"):
            if store:
                with m.State("COPY"):
                    # cycle t: store row grow + t -> (stage 1) its bank address -> (stage 2)
                    # the banks' read -> (stage 3) cache row t; the last write falls in
                    # GSTART, whose 3 cycles come before the first issue's cache read.
                    # A pass's first COPY copies its cin gather entries, then its cout + 3
                    # channel entries (cout, an odd count's pad, a fused gap's two), then
                    # the group's cin weight rows; the other groups' the rows only.
                    m.d.comb += copying.eq(1)
                    with m.If(clast):
                        # (the next phase's first cycle is its last only for the weights
                        # of a conv with cin = 1; the channel phase has at least 4)
                        m.d.sync += [ck.eq(0), cph.eq(Mux(cph == 0, 0, cph - 1)),
                                     clast.eq((cph == 1) & (f["cin"] == 1))]
                        with m.If(cph == 0):
                            m.next = "GSTART"
                    with m.Else():
                        m.d.sync += [ck.eq(ck + 1),
                                     clast.eq(ck == Mux(cph == 1, cout1, cinm2))]
            with m.State("SETUP"):
                # cycle fcnt: read field fcnt; capture field fcnt-1 (read latency 1)
                m.d.sync += [fcnt.eq(fcnt + 1), setup_end.eq(fcnt == nf)]
                with m.If(fcnt == 0):
                    m.d.sync += prog_dirty.eq(0)
                with m.If(setup_end):
                    m.d.sync += fcnt.eq(0)
                    with m.If(f["op"] == OP_END):
                        m.d.sync += row.eq(0)
                        m.next = "SETUP"
                    if cfg.attention:
                        with m.Elif(f["op"] >= OP_ECA):     # ECA, SAM, DYN
                            m.d.comb += att_start.eq(1)
                            m.next = "ATT"
                    with m.Elif(row == 0):
                        m.d.sync += in_load.eq(1)
                        m.next = "LOAD"
                    with m.Else():
                        m.next = gstart
                    # (a pass's first copy starts with its gather entries; LOAD keeps it)
                    if store:
                        m.d.sync += [cph.eq(2), ck.eq(0), cout1.eq(f["cout"] + 1),
                                     cinm2.eq(f["cin"] - 2)]
            with m.State("LOAD"):
                # One image value a cycle into buffer X (the counters below, outside the
                # FSM, on ``images.ready``, which is ``in_load`` and a gate of flip-flops).
                # (In LOAD ``in_load`` is set: the accept is ``valid & ~load_gate``.)
                with m.If(load_gate):
                    m.d.sync += in_load.eq(0)
                    m.next = "SETUP"
                with m.Elif(self.images.valid & lall):
                    m.d.sync += in_load.eq(0)
                    m.next = gstart
            with m.State("GSTART"):
                m.d.sync += gs.eq(gs + 1)
                # (every GSTART cycle: the position flags it sets are the same each time,
                # and the state alone, not gs == 0 as well, is in front of their enables:
                # the state decode -> gs -> the flags' enables was the UP5K engine's
                # critical path at seeds 2-3)
                m.d.comb += start_pos.eq(1)
                # (the counters' restarts too, the same values each cycle)
                m.d.sync += [t.eq(0), t0.eq(1), tend.eq(0), x.eq(0), y.eq(0), mm.eq(0),
                             pix.eq(0), rowb.eq(0), tin.eq(1), tcl.eq(m1["cin"] == 0)]
                with m.If(gs == 0):
                    m.d.sync += pg.eq(Mux(last_grp, f["last_group"], P))
                with m.If(gs == 1):
                    m.d.sync += pgm1.eq(pg - 1)
                    if R == 2:
                        m.d.sync += dsteps.eq(Mux(f["raw"], pg, (pg + 1) >> 1))
                    else:
                        m.d.sync += dsteps.eq(pg)
                with m.If(gs == 2):
                    # T = max(cin, D, 2): cin = D = 1 is padded to 2 cycles (the gap sums'
                    # read of a step comes after the previous position's write of it).
                    one = (f["cin"] == 1) & (dsteps == 1)
                    m.d.sync += [tpm2.eq(Mux(one, 0, Mux(f["cin"] > dsteps, m1["cin"] - 1,
                                                         dsteps - 2))),
                                 cinm2_t.eq(m1["cin"] - 1),
                                 dsm1.eq(dsteps - 1), dsm2.eq(dsteps - 2),
                                 dr_last.eq(dr_d == dsteps - 1),
                                 chain.eq(0 if store else
                                          (f["last_group"] == P) & ~f["raw"]
                                          & (~f["gap"] | _at_least(f["cin"], dfull - _HANDOFF))),
                                 gchain.eq((f["last_group"] == P) & ~f["raw"] & f["gap"]
                                           & _at_least(f["cin"], max(2 * dfull, 10))
                                           & (f["pool"] | (xlast != 0) | (ylast != 0))
                                           if dfull <= 8 and not store else 0),
                                 gs.eq(0)]
                    m.next = "ISSUE"
            def next_group():
                # chained: P_g, D, T stay; the group counters step (the last position's
                # advance restarted the position counters) in the block after the FSM, from
                # flip-flops that imply the state (tend & chain_next, gap_chain_go)
                m.next = "ISSUE"

            with m.State("ISSUE"):
                hold = Signal()
                # The raw drain waits for the logits consumer, so a raw position starts only
                # when the previous one has left the drain (never with a 1x1 classifier map,
                # whose groups are FLUSH-separated anyway).
                m.d.comb += hold.eq(f["raw"] & t0 & busy)
                with m.If(~hold):
                    m.d.comb += [iss.eq(tin), iss_first.eq(t0), iss_last.eq(tcl)]
                # The advance needs no ~hold: t = T - 1 >= 1 there, and hold is at t = 0 (the
                # raw hold was on the path to the FSM's state register, the iCE40 critical
                # path at seeds 1-2 once the counters' inputs were registers).
                with m.If(tend):
                    m.d.sync += [t.eq(0), t0.eq(1), tend.eq(0), tin.eq(1),
                                 tcl.eq(m1["cin"] == 0)]
                    with m.If(chain_next):
                        # the next group's first position follows as if it were another
                        # position of this one (T cycles after)
                        next_group()
                    with m.Elif(last_pos_r):
                        m.next = "FLUSH"
                with m.Elif(~hold):
                    m.d.sync += [t.eq(t + 1), t0.eq(0), tend.eq(t == tpm2),
                                 tin.eq(tin & ~tcl), tcl.eq(t == cinm2_t)]
            def group_end():
                with m.If(last_grp_r):
                    m.d.sync += row.eq(row + 1)
                    m.next = "SETUP"
                with m.Else():
                    m.d.sync += [grp.eq(grp + 1), grow.eq(grow_n)]
                    m.next = gstart

            with m.State("FLUSH"):
                # Until the group's last write (the per-group registers may change then): the
                # valid flags of every stage, not a countdown (no counter, no adder); the
                # pipeline never stalls, so this takes a fixed time (hw.overlay_timing), except
                # when the logits consumer holds the raw drain.
                with m.If(idle):
                    with m.If(f["gap"]):
                        m.d.sync += gap_chain_go.eq(chain & ~last_grp)
                        m.next = "GAPLOAD"
                    with m.Else():
                        group_end()
            with m.State("GAPLOAD"):
                m.d.comb += gap_go.eq(1)
                with m.If(chain_gap):
                    # (not gchain) the gap drain (D steps) is over by the next group's first
                    # hand-off (cin + 6 >= D); its writes use gptr, stepped at their last
                    next_group()
                with m.Else():
                    m.next = "GAPFLUSH"
            with m.State("GAPFLUSH"):
                with m.If(idle):
                    group_end()
            if cfg.attention:
                with m.State("ATT"):
                    with m.If(att_done):
                        m.d.sync += row.eq(row + 1)
                        m.next = "SETUP"

        # SETUP's field captures and derived registers, outside the FSM: fcnt counts only in
        # SETUP and is 0 elsewhere, so its compares (every case is >= 1) imply the state (the
        # state decode -> the capture enables was the UP5K engine's critical path at seed 2,
        # FSM -> SETUP's decode -> m2_w's clock enable, 20.7 ns).
        # One decrementer for every "n - 1" register, its input halved for wo and ho
        # with a pool (the window counts): a mux in front of the carry chain instead
        # of a second (halving) chain and a mux behind both (program RAM -> halving
        # decrementer -> mux -> xlast was the engine's critical path, 36.7 MHz).
        # On an ECP5 (a DP16KD's ~5.8 ns clock-to-out) the derived registers take the
        # field from a register a cycle later (lag 2). On the UP5K the decrementer's
        # result is registered in the carry chain's own logic cells (dec) and the
        # "n - 1" registers take it a cycle later, while the steps (rstep, rc, cr)
        # still take the field from the RAM (lag 1): program RAM -> halving mux ->
        # 15-bit decrementer -> routing to the m1 registers was the UP5K engine's
        # critical path at seed 1 once the bounds path was shortened; a register of
        # the field itself would be 15 more logic cells.
        assert _F["pool"] + 1 == _F["ho"] and _F["ho"] + 1 == _F["wo"]
        half = Signal()
        if ecp5:
            lag = 2
            src = Signal(len(data))
            m.d.sync += [src.eq(data),
                         half.eq(f["pool"] & ((fcnt == _F["ho"] + 1)
                                              | (fcnt == _F["wo"] + 1)))]
            m.d.comb += dec.eq(Mux(half, src >> 1, src) - 1)
        else:
            # (the select is a register set the cycle before: at fcnt = _F["ho"]
            # the data is the pool field, being captured; at _F["wo"] f_pool has it)
            lag = 1
            src = data
            m.d.sync += [half.eq(((fcnt == _F["ho"]) & data[0])
                                 | ((fcnt == _F["wo"]) & f["pool"])),
                         dec.eq(Mux(half, src >> 1, src) - 1)]

        def derive(name, dec_lag):
            # (pool comes before ho, wo; src_row before src_col)
            if dec_lag:
                if name in m1:
                    m.d.sync += m1[name].eq(dec)
                if name in lflag:
                    m.d.sync += [lflag[name].eq(dec[:len(m1[name])] == 0),
                                 lz[name].eq(dec[:len(m1[name])] == 0),
                                 lm2[name].eq(dec - 1)]
                if name == "wo":
                    m.d.sync += xlast.eq(dec)
                if name == "ho":
                    m.d.sync += ylast.eq(dec)
            if name == "src_row" and dec_lag == (lag == 2):
                m.d.sync += rstep.eq(Mux(f["pool"], src << 1, src))
            if name == "src_col" and dec_lag == (lag == 2):
                m.d.sync += [rc.eq(f["src_row"] - src), cr.eq(src - f["src_row"])]
        # field k is captured at fcnt = k + 1 (a compare with a constant, no adder
        # in front of the capture enables: the iCE40 critical path was fcnt - 1), the
        # steps derived from it at fcnt = k + lag, the "n - 1" registers at k + 2
        # (by fcnt = nf + 1, SETUP's last cycle)
        with m.Switch(fcnt):
            for name in PASS_FIELDS:
                with m.Case(_F[name] + 1):
                    m.d.sync += f[name].eq(data)
                    if lag == 1:
                        derive(name, False)
        with m.Switch(fcnt):
            for name in PASS_FIELDS:
                with m.Case(_F[name] + 2):
                    derive(name, True)

        # The advance and the chained group steps, decoded from flip-flops only (no FSM
        # state decode in front of the position counters' and grp's, grow's clock enables:
        # state -> adv -> the group step's OR -> grp's enable was the UP5K engine's
        # critical path at seeds 1 and 3, 20.8 ns). tend is set only in ISSUE and cleared at
        # the advance, the only way out of ISSUE: tend implies ISSUE. gap_chain_go is
        # "GAPLOAD and chain_gap", set with FLUSH's move to GAPLOAD (chain_gap's value then
        # is the one it has in GAPLOAD).
        m.d.comb += adv.eq(tend)
        # SETUP's last cycle: the pass's counters and pointers restart, outside the FSM
        # (setup_end is set only in SETUP, and clear at its last edge: it implies the state;
        # the state decode -> setup_end -> grp's clock enable was the UP5K engine's critical
        # path at seed 2, 23 ns)
        with m.If(setup_end):
            m.d.sync += [
                grp.eq(0), grow.eq(f["wbase"]), cebase.eq(f["cbase"]), gptr.eq(0),
                wptr.eq(0), gpend.eq(0), gfire.eq(0),
                t.eq(0), x.eq(0), y.eq(0), lt.eq(0), lx.eq(0), ly.eq(0), lk.eq(0),
                lstarted.eq(0),
                # (ltl takes the same compare of dec at this edge, in derive)
                lall.eq((dec[:len(m1["in_c"])] == 0) & lxl & lyl),
            ]
        with m.If((tend & chain_next) | gap_chain_go):
            m.d.sync += [grp.eq(grp + 1), grow.eq(grow_n)]

        # LOAD: one image value a cycle into buffer X, (y, x, c) at bank c & 1, address
        # (y*W + x) * Cp/2 + (c >> 1): counters and adders only. The accept is decoded from
        # flip-flops only (``in_load``, the FSM's LOAD state as a register of its own, and
        # the gate's three): the FSM's state decode was in front of ``images.ready`` and
        # the load counters' enables (the iCEBreaker's critical path once the parameter
        # writes were registered).
        m.d.comb += self.images.ready.eq(in_load & ~load_gate)
        with m.If(self.images.valid & self.images.ready):
            m.d.sync += [lstarted.eq(1), wq_en.eq(Mux(lk[0], 0b10, 0b01)),
                         wq_addr.eq(lk >> 1), wq_buf.eq(0),
                         wq_data[0].eq(self.images.payload.data[0]),
                         wq_data[1].eq(self.images.payload.data[0])]
            with m.If(ltl):
                # a pixel's last channel: skip the pad slot of an odd channel count
                m.d.sync += [lt.eq(0), ltl.eq(lz["in_c"]),
                             lk.eq(lk + Mux(m1["in_c"][0], 1, 2))]
                with m.If(lxl):
                    m.d.sync += [lx.eq(0), lxl.eq(lz["w"]),
                                 ly.eq(ly + 1), lyl.eq(ly == lm2["h"]),
                                 lall.eq(lz["in_c"] & lz["w"] & (ly == lm2["h"]))]
                with m.Else():
                    m.d.sync += [lx.eq(lx + 1), lxl.eq(lx == lm2["w"]),
                                 lall.eq(lz["in_c"] & (lx == lm2["w"]) & lyl)]
            with m.Else():
                m.d.sync += [lt.eq(lt + 1), ltl.eq(lt == lm2["in_c"]), lk.eq(lk + 1),
                             lall.eq((lt == lm2["in_c"]) & lxl & lyl)]

        # A program write after SETUP began re-runs it before the image is taken (set after
        # the FSM's clear, so a write in the clearing cycle is not lost).
        with m.If(prog_w.en):
            m.d.sync += prog_dirty.eq(1)

        def reg(name, shape, value):
            r = Signal(shape, name=name)
            m.d.sync += r.eq(value)
            return r

        # ---- output positions: raster, or window order with a fused maxpool ----------------
        # (x, y) are the window's (px, py) with a pool, mm the member (0,0) (0,1) (1,0) (1,1).
        # The pixel base address is one adder: pix + a step (src_col, inside a window
        # src_row - src_col or src_col - src_row), or at a row's end rowb + rstep (src_row,
        # twice with a pool). No multiplier in the address path; the coordinates s*y, s*x of
        # the bounds check are wires (x, y, mm concatenated, shifted by the stride).
        # x == xlast and y == ylast are registers (kept up to date with x + 1 and y + 1 as
        # the position advances): no comparator between the counters and the address adder
        # (the iCE40 critical path was f_pool -> x == xlast -> step mux -> pix adder).
        win_done = Signal()      # the last member of a window (always without a pool)
        row_end = Signal()
        col_end = Signal()
        m.d.comb += [win_done.eq(~f["pool"] | (mm == 3)),
                     last_pos.eq(win_done & row_end & col_end)]
        wrap = Signal()
        m.d.comb += wrap.eq(win_done & row_end)
        pstep = Signal(aw)
        with m.If(wrap):
            m.d.comb += pstep.eq(rstep)
        with m.Elif(f["pool"] & (mm == 1)):
            m.d.comb += pstep.eq(rc)
        with m.Elif(f["pool"] & (mm == 3)):
            m.d.comb += pstep.eq(cr)
        with m.Else():
            m.d.comb += pstep.eq(f["src_col"])
        # What the advance needs is computed one cycle ahead, into registers loaded every
        # cycle from the position counters: a position takes T >= 2 cycles and its counters
        # change only at its advance (or at GSTART, 3 cycles before the first issue), so
        # from its second cycle on these registers hold the current position's values, in
        # time for the advance in its last cycle; a restart (GSTART, or a chained group's
        # last advance) is followed by construction, as they are functions of the counters.
        # The advance is then flip-flops -> clock enable / data of the counters (the iCE40
        # critical path was the step mux -> pix adder -> pix, and x + 1 == xlast -> row_end).
        wrap_r = reg("wrap_r", 1, wrap)
        # The step is registered, not the sum: the advance adds it (flip-flops -> one base
        # mux -> the carry chain -> pix), while mm -> win_done / wrap -> the step's priority
        # mux -> the base mux -> the aw-bit carry chain -> pixn_r was the UP5K engine's
        # critical path at seed 3 (22.7 ns).
        pstep_r = reg("pstep_r", aw, pstep)
        pixn_r = Signal(aw, name="pixn")             # the next position's base address
        m.d.comb += pixn_r.eq(Mux(wrap_r, rowb, pix) + pstep_r)
        win_done_r = reg("win_done_r", 1, win_done)
        m.d.sync += [last_pos_r.eq(last_pos),
                     chain_next.eq(last_pos & chain & ~last_grp & (~f["gap"] | gchain))]
        x_end_n = reg("x_end_n", 1, x + 1 == xlast)  # row_end after a step of x
        y_end_n = reg("y_end_n", 1, y + 1 == ylast)  # col_end after a step of y
        # first_pos = (x, y) == (0, 0) (every member of a pool's first window) as a register
        # stepped with the counters (the position's tag needs it at its first cycle)
        first_r = Signal()
        m.d.comb += first_pos.eq(first_r)
        with m.If(adv):
            m.d.sync += [mm.eq(mm + f["pool"]), pix.eq(pixn_r)]
            with m.If(wrap_r):
                m.d.sync += [x.eq(0), y.eq(y + 1), rowb.eq(pixn_r), row_end.eq(xlast == 0),
                             col_end.eq(y_end_n)]
            with m.Elif(win_done_r):
                m.d.sync += [x.eq(x + 1), row_end.eq(x_end_n)]
            with m.If(win_done_r):
                m.d.sync += first_r.eq(last_pos_r)
            with m.If(last_pos_r):
                # the group's last position: the counters restart for a chained next group
                # (a decode of registers, not of the FSM's chain decision: x, mm wrap anyway)
                m.d.sync += [y.eq(0), rowb.eq(0), pix.eq(0), col_end.eq(ylast == 0)]
        with m.If(start_pos):
            m.d.sync += [row_end.eq(xlast == 0), col_end.eq(ylast == 0), first_r.eq(1)]

        # ---- MAC pipeline ----------------------------------------------------------------

        # stage 0: gather read, weight row address (read 3 cycles later, when the value comes)
        if dynw is not None:
            m.d.comb += gat_r.addr.eq(Mux(att_gat, att_gaddr, f["gbase"] + t))
        else:
            # (with a weight store the pass's entries were copied to 0..cin-1)
            m.d.comb += gat_r.addr.eq(t if store else f["gbase"] + t)
        v1 = reg("v1", 1, iss)
        first1 = reg("first1", 1, iss_first)
        last1 = reg("last1", 1, iss_last)
        pix1 = reg("pix1", aw, pix)
        # The coordinates s*y, s*x (with a pool the window's member added) as registers
        # loaded every cycle from the counters: the thresholds below are loaded from them
        # only from the second cycle after an advance (adv_r holds them in the first), by
        # when these hold the new position's (mm -> the pool mux -> the stride mux -> h -
        # s*y's carry chain -> by_hv1 was the UP5K engine's critical path at seed 2, 22.8 ns).
        oy = Mux(f["pool"], Cat(mm[1], y), y)
        ox = Mux(f["pool"], Cat(mm[0], x), x)
        s2 = f["stride"][1]          # stride 1 or 2
        syv = reg("sy_r", dim + 2, Mux(s2, oy << 1, oy))
        sxv = reg("sx_r", dim + 2, Mux(s2, ox << 1, ox))
        # The bounds check's position-dependent part, reduced to what the 4-bit dy, dx are
        # compared with: s*y + dy >= 0 is "s*y >= 8" or dy >= -(s*y mod 8) when s*y < 8;
        # dy < h - s*y is "always" when h - s*y >= 8, "never" when it is < -8, else a 5-bit
        # signed compare. Stage 0 registers s*y >= 8, -(s*y mod 8) and h - s*y (a mux and
        # one carry chain each from the counters); stage 2 reduces h - s*y and dy, dx meet
        # the thresholds in small compares, no adder (gather RAM -> s*y + dy adder ->
        # compare -> yok2 was the critical path at seeds 2 and 3).
        # The compares themselves are at stage 2, from dy, dx registered at stage 1: the
        # gather RAM's output only meets a flip-flop (gather RAM -> 5-bit dy < h - s*y
        # compare -> yok2 was the UP5K engine's critical path at seed 1, 25.9 ns). The
        # thresholds are not registered a second time: they depend on the counters only,
        # which change only at an advance, and a position takes T >= 2 cycles; so the
        # threshold registers hold still in the cycle after an advance (adv_r), and two
        # cycles after an issue they still hold its position's values (for the issue in a
        # position's last cycle too). Same stages, same cycles.
        adv_r = reg("adv_r", 1, adv)
        def bounds0(prefix, sv, lim):
            # Unsigned-offset forms (sign bit flipped, i.e. + 8 and + 16) of the thresholds,
            # so that stage 2's compares with dy, dx are unsigned carry chains (the signed
            # compares' extra LUT levels were between nlo and inb3, the UP5K engine's
            # critical path at seed 3, 22.4 ns). h - s*y keeps its full width here; its
            # reduction is at stage 2, beside the compares (at stage 0 it was after the
            # 18-cell carry chain: 27 ns).
            regs = (Signal(1, name=f"{prefix}_loall1"),
                    Signal(4, name=f"{prefix}_nlo1"),
                    Signal(signed(dim + 3), name=f"{prefix}_hv1"))
            with m.If(~adv_r):
                m.d.sync += [regs[0].eq(sv[3:] != 0),
                             regs[1].eq(-Cat(sv[:3], C(0, 1)).as_signed() ^ 8),
                             regs[2].eq(lim - sv)]
            return regs
        by1 = bounds0("by", syv, f["h"])
        bx1 = bounds0("bx", sxv, f["w"])
        tagw = 4
        tag1 = reg("tag1", tagw, Cat(mm, first_pos, last_pos))
        if store:
            # The cache row is the issue counter (the group's rows were copied to 0..cin-1);
            # in COPY the counter is the copied row's, grow + t its store row.
            # COPY's counter ck: phase cph 2 (a pass's gather entries gbase + ck, to entry
            # ck), 1 (its channel entries cbase + ck, to entry (cbase + ck) mod
            # channel_rows), 0 (the group's weight rows grow + ck, to row ck).
            wa1 = reg("wa1", max(1, ceil_log2(cfg.weight_rows)), t)
            cbits = max(ceil_log2(cfg.weight_rows), ceil_log2(cfg.gather_rows),
                        ceil_log2(cfg.channel_rows))
            s0 = Signal(wsb - 1)
            m.d.comb += s0.eq(Mux(cph == 2, f["gbase"], Mux(cph == 1, f["cbase"], grow)) + ck)
            sa1 = reg("sa1", wsb, Cat(s0[:wsb - 2], Mux(cph == 0, s0[wsb - 2], cph[0]),
                                      cph != 0))
            cp1 = reg("cp1", 1, copying)
            cp2 = reg("cp2", 1, cp1)
            cp3 = reg("cp3", 1, cp2)
            cg2 = reg("cg2", 2, reg("cg1", 2, cph))
            cg3 = reg("cg3", 2, cg2)
            ck1 = reg("ck1", cbits, Mux(cph == 1, s0, ck))
            ck2 = reg("ck2", cbits, ck1)
            ck3 = reg("ck3", cbits, ck2)
        else:
            wa1 = reg("wa1", max(1, ceil_log2(cfg.weight_rows)), grow + t)
        # stage 1: the read address; dy, dx against the registered thresholds
        gd = gat_r.data
        off = gd[1:1 + aw]
        dy = gd[1 + aw:5 + aw].as_signed()
        dx = gd[5 + aw:9 + aw].as_signed()
        v2 = reg("v2", 1, v1)
        first2 = reg("first2", 1, first1)
        last2 = reg("last2", 1, last1)
        # (a copy cycle reads the store row instead: no MAC item is in flight then)
        addr2 = reg("addr2", aw, Mux(cp1, Cat(sa1, store_top), pix1 + off) if store
                    else pix1 + off)
        def in_bounds(b, d):
            """lo <= d < hi for the 4-bit offset d (signed, held as d + 8: its sign bit
            flipped) against stage 0's thresholds b."""
            loall, nlo, hv = b
            hibig = ~hv[-1] & (hv[3:-1] != 0)
            hismall = hv[-1] & ~hv[3:].all()
            # d < hv[:5] (5-bit signed) as d + 16 < hv[:5] + 16, unsigned
            d5 = Cat(d[:3], ~d[3], d[3])           # sext(d) + 16, from d + 8
            return Cat(loall | (d >= nlo), hibig | (~hismall & (d5 < (hv[:5] ^ 16))))
        dy2 = reg("dy2", 4, dy ^ 8)      # dy + 8 (unsigned compares at stage 2)
        dx2 = reg("dx2", 4, dx ^ 8)
        bank2 = reg("bank2", 1, gd[0])
        tag2 = reg("tag2", tagw, tag1)
        wa2 = reg("wa2", len(wa1), wa1)
        # stage 2: bounds check; the feature-map read
        if cfg.attention:
            m.d.comb += rd_addr.eq(Mux(att_rd, att_raddr, addr2))
        else:
            m.d.comb += rd_addr.eq(addr2)
        v3 = reg("v3", 1, v2)
        first3 = reg("first3", 1, first2)
        last3 = reg("last3", 1, last2)
        # the four bound tests as flip-flops, their AND at stage 3 beside the bank select
        # (dy2 -> the compares' carry chains -> the 4-way AND -> inb3 was the UP5K engine's
        # critical path at seed 1, 6 LUT levels)
        inb3 = reg("inb3", 4, Cat(in_bounds(by1, dy2), in_bounds(bx1, dx2)))
        bank3 = reg("bank3", 1, bank2)
        tag3 = reg("tag3", tagw, tag2)
        if ecp5:
            # the weight row is read one stage earlier, so that it arrives beside the zero-
            # filled activation and both go straight into the MULT18X18D's input registers
            # (no fabric register between the DP16KD's output and the DSP block)
            m.d.comb += wt_r.addr.eq(wa2)
        else:
            wa3 = reg("wa3", len(wa1), wa2)
            m.d.comb += wt_r.addr.eq(wa3)
        # stage 3: zero fill outside the map, bank select
        rd = {key: val[3] for key, val in banks.items()}
        if store:
            # The copy's data (the store row read at stage 2 by a copy cycle) into the cache,
            # and in a pass's first COPY the gather entries into the gather table, its
            # channel entries into the channel tables, at their entry modulo channel_rows.
            row64 = Cat(*[banks[bp][4] for bp in ((0, 0), (0, 1), (1, 0), (1, 1))])
            m.d.comb += [wt_w.addr.eq(ck3), wt_w.en.eq(Mux(cp3 & (cg3 == 0), (1 << P) - 1, 0)),
                         wt_w.data.eq(row64),
                         gat_w.addr.eq(ck3), gat_w.en.eq(cp3 & (cg3 == 2)),
                         gat_w.data.eq(row64[:32])]
            cen = cp3 & (cg3 == 1)
            for name, data in (("bias", row64[:32]), ("m", row64[32:48]),
                               ("shq", Cat(row64[48:48 + SH_BITS], row64[56:64]))):
                for b, wp in enumerate(tables_w[name]):
                    m.d.comb += [wp.addr.eq(ck3[1:] if R == 2 else ck3), wp.data.eq(data),
                                 wp.en.eq(Mux(cen & ((ck3[0] == b) if R == 2 else 1),
                                              (1 << len(wp.en)) - 1, 0))]
        sel = Mux(f["src"], Mux(bank3, rd[1, 1], rd[1, 0]), Mux(bank3, rd[0, 1], rd[0, 0]))
        v4 = reg("v4", 1, v3)
        first4 = reg("first4", 1, first3)
        last4 = reg("last4", 1, last3)
        act3 = Signal(8)
        m.d.comb += act3.eq(Mux(inb3.all(), sel, 0))
        # A fabric register between the feature-map block RAM and the multipliers: on an
        # ECP5 the DP16KD's unregistered output (5.61 ns clock-to-out) -> zero fill / bank
        # select -> the MULT18X18D's B input register was every 12F/25F overlay seed's
        # critical path (12.9-14.3 ns); now that hop ends in act4, placed beside the banks.
        act4 = reg("act4", 8, act3)
        tag4 = reg("tag4", tagw, tag3)
        # stage 4: P products (registered)
        if ecp5:
            # The weight row (read at stage 2, arriving at 3) gets the matching fabric
            # register, and the blocks multiply from both registers with only their output
            # register clocked: the same two cycles from act3 to a product as with the
            # blocks' own input registers, each hop now flip-flop to flip-flop.
            wq4 = reg("wq4", 8 * P, wt_r.data)
            wts = [wq4[8 * k:8 * k + 8].as_signed() for k in range(P)]
        else:
            wts = [wt_r.data[8 * k:8 * k + 8].as_signed() for k in range(P)]
        prods = [Signal(signed(16), name=f"prod{k}") for k in range(P)]
        if cfg.primitives == "ice40":
            for j in range(P // 2):
                o = Signal(32, name=f"mac{j}_o")
                m.submodules[f"mac{j}"] = Instance(
                    "SB_MAC16",
                    p_MODE_8x8=C(1, 1), p_A_SIGNED=C(1, 1), p_B_SIGNED=C(0, 1),
                    p_A_REG=C(0, 1), p_B_REG=C(0, 1), p_C_REG=C(0, 1), p_D_REG=C(0, 1),
                    p_TOP_8x8_MULT_REG=C(1, 1), p_BOT_8x8_MULT_REG=C(1, 1),
                    p_PIPELINE_16x16_MULT_REG1=C(0, 1), p_PIPELINE_16x16_MULT_REG2=C(0, 1),
                    p_TOPOUTPUT_SELECT=C(2, 2), p_BOTOUTPUT_SELECT=C(2, 2),
                    p_TOPADDSUB_LOWERINPUT=C(0, 2), p_TOPADDSUB_UPPERINPUT=C(0, 1),
                    p_TOPADDSUB_CARRYSELECT=C(0, 2), p_BOTADDSUB_LOWERINPUT=C(0, 2),
                    p_BOTADDSUB_UPPERINPUT=C(0, 1), p_BOTADDSUB_CARRYSELECT=C(0, 2),
                    p_NEG_TRIGGER=C(0, 1),
                    i_CLK=ClockSignal(), i_CE=C(1, 1),
                    # A = two signed weights (lane 2j low byte), B = the activation twice.
                    i_A=Cat(wt_r.data[16 * j:16 * j + 16]), i_B=Cat(act4, act4),
                    i_C=C(0, 16), i_D=C(0, 16),
                    i_AHOLD=C(0, 1), i_BHOLD=C(0, 1), i_CHOLD=C(0, 1), i_DHOLD=C(0, 1),
                    i_IRSTTOP=C(0, 1), i_IRSTBOT=C(0, 1), i_ORSTTOP=C(0, 1),
                    i_ORSTBOT=C(0, 1), i_OLOADTOP=C(0, 1), i_OLOADBOT=C(0, 1),
                    i_ADDSUBTOP=C(0, 1), i_ADDSUBBOT=C(0, 1), i_OHOLDTOP=C(0, 1),
                    i_OHOLDBOT=C(0, 1), i_CI=C(0, 1), i_ACCUMCI=C(0, 1), i_SIGNEXTIN=C(0, 1),
                    o_O=o)
                m.d.comb += [prods[2 * j].eq(o[:16].as_signed()),
                             prods[2 * j + 1].eq(o[16:].as_signed())]
        elif ecp5:
            # stage 3 -> 4: the fabric registers wq4 / act4; 4 -> 5: the DSP's output register
            for k in range(P):
                m.submodules[f"mac{k}"] = mult18x18d_registered(wts[k], act4, prods[k],
                                                                input_registers=False)
        else:
            for k in range(P):
                m.d.sync += prods[k].eq(wts[k] * act4)
        v5 = reg("v5", 1, v4)
        first5 = reg("first5", 1, first4)
        last5 = reg("last5", 1, last4)
        tag5 = reg("tag5", tagw, tag4)
        # stage 5: accumulate (the first product of a position loads)
        accs = [Signal(signed(acc_bits), name=f"acc{k}") for k in range(P)]
        with m.If(v5):
            for k in range(P):
                m.d.sync += accs[k].eq(Mux(first5, prods[k], accs[k] + prods[k]))
        v6 = reg("v6", 1, v5)
        last6 = reg("last6", 1, last5)
        tag6 = reg("tag6", tagw, tag5)
        handoff = Signal()
        m.d.comb += handoff.eq(v6 & last6)

        # ---- drain: shift register -> R requant lanes --------------------------------------
        shadow = [Signal(signed(sw), name=f"shadow{j}") for j in range(P)]
        dr_act = Signal()
        dr_gap = Signal()
        dr_tag = Signal(tagw)
        # The gap sums live in one small block RAM per requant lane (P/R words of gsum_bits):
        # registers and their P/R-way read mux were the engine's largest LUT group and its
        # critical path (read mux -> gap adder). The read is synchronous, so its address is
        # taken one stage early (q8 for the fused sum, DR0 for the gap drain), and the read
        # is not transparent (Yosys would add a register and a bypass mux per bit): a position
        # takes at least 2 cycles (T = max(cin, D, 2)), so the sum of step d is written before
        # the next position's step d reads it. So no read whose data is used hits the
        # address written in its cycle (a gap drain's reads come before the next group's
        # first sum writes): COLLISION_FREE, no read-first emulation (its bypass register and
        # multiplexer were on the UP5K engine's critical path: gap sums -> bypass mux ->
        # q1sel -> acc + bias, seeds 1-2). The tests' poison checks the claim.
        gsum_w, gsum_r = [], []
        for r in range(R):
            mem = memory.Memory(shape=unsigned(gsum_bits), depth=max(2, P // R), init=[],
                                attrs={**small_attrs, **COLLISION_FREE})
            m.submodules[f"gsum{r}"] = mem
            wp = mem.write_port()
            gsum_w.append(wp)
            rp = mem.read_port(domain="sync")
            gsum_r.append(_ReadView(rp, collision_read(m, rp, [wp])))
        step = Signal(range(R + 1))
        m.d.comb += step.eq(Mux(f["raw"], 1, R))
        # A drain step: always, except on the raw pass without room in the logits queue.
        dstep = Signal()
        m.d.comb += [dstep.eq(dr_act & ~raw_full),
                     raw_step.eq(dstep & f["raw"])]
        # The shift register has two sources only (the accumulators, itself shifted by R):
        # the raw pass takes lane d % R and shifts every R-th step; the gap drain reads the
        # sums through their own read port (below), not through the shift register.
        with m.If(dstep):
            m.d.sync += [dr_d.eq(dr_d + 1), dr_last.eq(dr_d == dsm2)]
            with m.If(dr_last):
                m.d.sync += dr_act.eq(0)
            with m.If(~f["raw"] | (dr_d[0] if R == 2 else 1)):
                m.d.sync += [shadow[j].eq(shadow[j + R]) for j in range(P - R)]
        with m.If(handoff):
            m.d.sync += [shadow[j].eq(accs[j]) for j in range(P)]
            m.d.sync += [dr_act.eq(1), dr_d.eq(0), dr_last.eq(dsm1 == 0), dr_gap.eq(0),
                         dr_tag.eq(tag6)]
        with m.If(handoff):
            m.d.sync += [gfire.eq(gpend), gpend.eq(tag6[3] & gchain)]
        with m.If(gfire & dr_act & ~dr_gap & dr_last):
            # gchain: the previous group's gap drain right after the next group's first
            # position's last drain step (dr_act, not dstep: gfire is never set on the raw
            # pass, the only one whose drain holds; raw_full -> dstep -> gap_go -> the
            # drain's registers was the UP5K engine's critical path at seed 1)
            m.d.comb += gap_go.eq(1)
            m.d.sync += gfire.eq(0)
        with m.If(gap_go):
            m.d.sync += [dr_act.eq(1), dr_d.eq(0), dr_last.eq(dsm1 == 0), dr_gap.eq(1)]
        # One read port on the gap sums: the accumulate stage's index (read at q8, used at
        # q9), or the gap drain's (read at DR0, used at q1).
        gidx = Signal(range(max(2, P // R)))    # as wide as the gap sums' address
        gsel = [gsum_r[r].data for r in range(R)]
        m.d.comb += [gsum_r[r].addr.eq(gidx) for r in range(R)]
        # busy = dr_act | v1 | ... | v6, as a register computed from the next values of
        # those flags (the raw hold decision starts at a flip-flop, not at a 7-input OR).
        busy_n = Signal()       # busy's next value: also the look-ahead idle's (below)
        m.d.comb += busy_n.eq(iss | v1 | v2 | v3 | v4 | v5 | handoff | gap_go
                              | (dr_act & ~(dstep & dr_last)))
        m.d.sync += busy.eq(busy_n)

        # DR0: channel-table reads, R lanes taken
        # The table entry of the lanes taken (cebase + k) is a counter (one adder before the
        # RAM address, the parity banks' split); the lane-valid tests are comparisons only.
        k0 = Signal(range(P + 2))
        m.d.comb += k0.eq(Mux(f["raw"], dr_d, dr_d * R))
        ent = Signal(W["cout"] + 1)
        # The gap drain reads the gap's entry (and, on a 2-unit engine, its twin in the odd
        # bank) at every step.
        # ent_next: the value ent takes at the next edge (the bias read below looks ahead).
        ent_next = Signal(len(ent))
        m.d.comb += ent_next.eq(ent)
        with m.If(dstep & ~dr_gap):
            m.d.comb += ent_next.eq(ent + step)
        with m.If(handoff):
            m.d.comb += ent_next.eq(cebase)
            with m.If(tag6[3]):
                # the group's last position: the next hand-off is the next group's
                m.d.sync += cebase.eq(cebase + P)
        with m.If(gap_go):
            m.d.comb += ent_next.eq(f["gap_ent"])
        m.d.sync += ent.eq(ent_next)
        # On an ECP5 the bias is read a cycle early, at ent_next, and registered after its
        # parity swap (q1b): a channel-table DP16KD's output (5.61 ns clock-to-out) -> the
        # swap -> the 32-bit acc + bias carry chain was the 12F and 25F overlays' critical
        # path (11.6-12.1 ns). The value is the same: the entry is the one ent holds when
        # the data comes out, the cycle before S1. (The bias words are written only before
        # a pass: by the parameter port, or by a DYN pass before its conv pass.)
        early_bias = ecp5

        def bank_addr(e):
            """The parity banks' read addresses of table entry ``e`` (bank 0 holds the even
            entries: lane 0 of an odd entry reads the next row there)."""
            return [(e >> 1) + e[0], e >> 1] if R == 2 else [e]

        for name in tables:
            if not (early_bias and name == "bias"):
                m.d.comb += [p_.addr.eq(a) for p_, a in zip(tables[name], bank_addr(ent))]
        if early_bias:
            # The early read's bank addresses, selected among candidates computed from
            # flip-flops only (ent, cebase, the pass's gap_ent) with ent_next's priorities:
            # not bank_addr(ent_next), which put the drain's step decision, ent_next's adder
            # and mux and then the banks' address adder in series before the RAM (the 12F
            # overlay's critical path, 12.6 ns, seed 1).
            if R == 2:
                # ent = 2h + b: the entry a step on (ent + 1 on the raw pass, else ent + 2)
                # in bank 0 is h + 1 or h + 1 + b, in bank 1 h + b or h + 1: one adder each
                h, b = ent >> 1, ent[0]
                a_step = [Mux(f["raw"], h + 1, h + Cat(~b, b)), Mux(f["raw"], h + b, h + 1)]
            else:
                a_step = [ent + step]
            a_bias = [Signal.like(p_.addr, name=f"bias_addr{r}")
                      for r, p_ in enumerate(tables["bias"])]
            m.d.comb += [a.eq(x) for a, x in zip(a_bias, bank_addr(ent))]
            with m.If(dstep & ~dr_gap):
                m.d.comb += [a.eq(x) for a, x in zip(a_bias, a_step)]
            with m.If(handoff):
                m.d.comb += [a.eq(x) for a, x in zip(a_bias, bank_addr(cebase))]
            with m.If(gap_go):
                m.d.comb += [a.eq(x) for a, x in zip(a_bias, bank_addr(f["gap_ent"]))]
            m.d.comb += [p_.addr.eq(a) for p_, a in zip(tables["bias"], a_bias)]
        if early_bias:
            bp = tables["bias"]
            q1b = [reg(f"q1b{r}", 32, bp[0].data if R == 1
                       else Mux(ent[0], bp[1 - r].data, bp[r].data)) for r in range(R)]
        q1v = reg("q1v", 1, dstep)
        if R == 2:
            lane0 = Mux(f["raw"] & dr_d[0], shadow[1], shadow[0])
        else:
            lane0 = shadow[0]
        lanes = [lane0] + shadow[1:R]
        q1s_acc = [reg(f"q1s{r}", signed(sw), lanes[r]) for r in range(R)]
        q1d = reg("q1d", range(P + 1), dr_d)
        q1last = reg("q1last", 1, dr_last)
        q1lv = reg("q1lv", R, Cat(k0 < pg, (k0 < pgm1) & ~f["raw"]) if R == 2 else k0 < pg)
        q1gap = reg("q1gap", 1, dr_gap)
        q1tag = reg("q1tag", tagw, dr_tag)
        q1swap = reg("q1swap", 1, ent[0] if R == 2 else 0)
        # The gap drain's sums arrive from their RAM here (read at DR0).
        q1s = [Signal(signed(sw), name=f"q1sel{r}") for r in range(R)]
        m.d.comb += [q1s[r].eq(Mux(q1gap, gsel[r], q1s_acc[r])) for r in range(R)]

        def table(name, r):
            ports = tables["shq" if name in ("sh", "qmax") else name]
            data = ports[0].data if R == 1 else Mux(q1swap, ports[1 - r].data, ports[r].data)
            if name == "sh":
                return data[:SH_BITS]
            if name == "qmax":
                return data[SH_BITS:]
            return data

        def follow(prefix, n, *sigs):
            return [reg(f"{prefix}{n}_{i}", len(s_) if not isinstance(s_, Signal)
                        else s_.shape(), s_) for i, s_ in enumerate(sigs)]

        # S1: v = acc + bias, the lane's m, sh, qmax (the gap sums: the gap's table entry,
        # bias 0, so no mux here)
        q2 = follow("q", 2, q1v, q1d, q1last, q1lv, q1gap, q1tag)
        # v fits int32: the artifact bounds bias + sum(w * x) and the gap sums by int32
        # (models/ops.py), so the requant multiply is two 16x16 products.
        def acc_plus_bias(r, a, b):
            """``a + b`` (32 bits). On the UP5K as a carry-select adder: the low 16 bits and
            both possible high halves (carry in 0 and 1) side by side, the high half chosen
            by the low half's carry: the gap sums' block RAM -> q1sel mux -> one 32-cell
            carry chain -> q2v was the UP5K engine's critical path (seeds 1-2, 23 ns, 13.7 ns
            of it logic); two 16-cell chains in parallel and a mux (~32 logic cells)."""
            if ecp5 or cfg.primitives != "ice40":
                return a + b
            a32 = Signal(signed(32), name=f"q1a{r}")
            b32 = Signal(signed(32), name=f"q1b32_{r}")
            lo = Signal(17, name=f"q1lo{r}")
            hi0 = Signal(16, name=f"q1hi0_{r}")
            hi1 = Signal(16, name=f"q1hi1_{r}")
            m.d.comb += [a32.eq(a), b32.eq(b), lo.eq(a32[:16] + b32[:16]),
                         hi0.eq(a32[16:] + b32[16:]), hi1.eq(a32[16:] + b32[16:] + 1)]
            return Cat(lo[:16], Mux(lo[16], hi1, hi0)).as_signed()

        v2s = [reg(f"q2v{r}", signed(32), acc_plus_bias(
                   r, q1s[r], (q1b[r] if early_bias else table("bias", r)).as_signed()))
               for r in range(R)]
        m2 = [reg(f"q2m{r}", M_BITS, table("m", r)) for r in range(R)]
        sh2 = [reg(f"q2sh{r}", SH_BITS, table("sh", r)) for r in range(R)]
        qm2 = [reg(f"q2qm{r}", 8, table("qmax", r)) for r in range(R)]
        # The classifier: acc + bias is the logit (one a cycle, lane 0).
        q2v_, q2d_, q2last_, q2lv_, q2gap_, q2tag_ = q2
        m.d.comb += [lq_push.eq(q2v_ & f["raw"] & q2lv_[0]),
                     # (last_grp_r: the raw pass is never chained, so grp has held still
                     # for many cycles when its logits drain; grp -> the compare -> lq_last
                     # was the UP5K engine's critical path at seed 1)
                     lq_data.eq(Cat(v2s[0][:32], last_grp_r & q2last_ & q2tag_[3])),
                     drain_busy.eq(dr_act | q1v | q2v_)]
        # S2: the requant multiply as two 16x16 products, v = vhi * 2**16 + vlo (vhi signed,
        # vlo unsigned): pl = vlo * m (16u x 16u), ph = vhi * m (16s x 16u), each exactly one
        # SB_MAC16 / MULT18X18D. S3: p = (ph + pl[16:]) * 2**16 + pl[:16]; ph + pl[16:] fits
        # int32 (|vhi * m| <= 2**15 * (2**16 - 1)). On iCE40 both stages are inside the DSPs
        # (the high block's product register, then its 32-bit adder and output register with
        # the low block's product high half on its D input): no LUT adder, no LUT register.
        # The requant stages never stall, so what an item needs only at S7/S8 (its drain step,
        # last flag, pool member and first-position flag, the lane's qmax) goes through a
        # block RAM delay line instead of five register stages (~80 logic cells): written at
        # S2, read 4 cycles later, out at S7. The valid flags stay registers (reset).
        dl_data = Cat(q2d_, q2last_, q2tag_[:3], *qm2)
        dl_depth = 8
        # (COLLISION_FREE: it reads 4 entries behind the one it writes.)
        dl_mem = memory.Memory(shape=unsigned(len(dl_data)), depth=dl_depth, init=[],
                               attrs={**small_attrs, **COLLISION_FREE})
        m.submodules.requant_delay = dl_mem
        dl_wp = dl_mem.write_port()
        dl_rp = dl_mem.read_port(domain="sync")
        dl_rp = _ReadView(dl_rp, collision_read(m, dl_rp, [dl_wp]))
        dl_k = Signal(range(dl_depth))
        m.d.sync += dl_k.eq(dl_k + 1)
        m.d.comb += [dl_wp.addr.eq(dl_k), dl_wp.data.eq(dl_data), dl_wp.en.eq(1),
                     dl_rp.addr.eq(dl_k - 4)]
        nd = len(q2d_)
        q7d_ = dl_rp.data[:nd]
        q7last_ = dl_rp.data[nd]
        q7tag_ = dl_rp.data[nd + 1:nd + 4]
        qm7 = [dl_rp.data[nd + 4 + 8 * r:nd + 12 + 8 * r] for r in range(R)]
        q3 = follow("q", 3, q2v_, q2lv_, q2gap_)
        # the last item of a group's last position (or of its gap drain, whose tag is the last
        # position's): one flag through registers to S9, where gptr and wptr step to the next
        # group (the delay line's 16 bits are full: one more bit would be a second block RAM)
        gend = q2last_ & q2tag_[3]
        for k in range(3, 10):
            gend = reg(f"q{k}gend", 1, gend)
        shm3 = [reg(f"q3shm{r}", SH_BITS, sh2[r] - 1) for r in range(R)]
        q4 = follow("q", 4, *q3)
        p4 = []
        for r in range(R):
            vlo, vhi = v2s[r][:16], v2s[r][16:32]
            if cfg.primitives == "ice40":
                olo = Signal(32, name=f"rq{r}lo_o")
                ohi = Signal(32, name=f"rq{r}hi_o")
                for part, a_in, a_signed, d_in, o in (("lo", vlo, 0, C(0, 16), olo),
                                                       ("hi", vhi, 1, olo[16:], ohi)):
                    m.submodules[f"rq{r}{part}"] = Instance(
                        "SB_MAC16",
                        p_MODE_8x8=C(0, 1), p_A_SIGNED=C(a_signed, 1), p_B_SIGNED=C(0, 1),
                        p_A_REG=C(0, 1), p_B_REG=C(0, 1), p_C_REG=C(0, 1), p_D_REG=C(0, 1),
                        p_TOP_8x8_MULT_REG=C(0, 1), p_BOT_8x8_MULT_REG=C(0, 1),
                        p_PIPELINE_16x16_MULT_REG1=C(0, 1), p_PIPELINE_16x16_MULT_REG2=C(1, 1),
                        # lo: the registered product; hi: product + D, registered again
                        p_TOPOUTPUT_SELECT=C(3 if part == "lo" else 1, 2),
                        p_BOTOUTPUT_SELECT=C(3 if part == "lo" else 1, 2),
                        p_TOPADDSUB_LOWERINPUT=C(2, 2), p_TOPADDSUB_UPPERINPUT=C(1, 1),
                        p_TOPADDSUB_CARRYSELECT=C(2, 2), p_BOTADDSUB_LOWERINPUT=C(2, 2),
                        p_BOTADDSUB_UPPERINPUT=C(1, 1), p_BOTADDSUB_CARRYSELECT=C(0, 2),
                        p_NEG_TRIGGER=C(0, 1),
                        i_CLK=ClockSignal(), i_CE=C(1, 1),
                        i_A=a_in, i_B=m2[r], i_C=C(0, 16), i_D=d_in,
                        i_AHOLD=C(0, 1), i_BHOLD=C(0, 1), i_CHOLD=C(0, 1), i_DHOLD=C(0, 1),
                        i_IRSTTOP=C(0, 1), i_IRSTBOT=C(0, 1), i_ORSTTOP=C(0, 1),
                        i_ORSTBOT=C(0, 1), i_OLOADTOP=C(0, 1), i_OLOADBOT=C(0, 1),
                        i_ADDSUBTOP=C(0, 1), i_ADDSUBBOT=C(0, 1), i_OHOLDTOP=C(0, 1),
                        i_OHOLDBOT=C(0, 1), i_CI=C(0, 1), i_ACCUMCI=C(0, 1),
                        i_SIGNEXTIN=C(0, 1), o_O=o)
                lo4 = reg(f"q4lo{r}", 16, olo[:16])
                p4.append(Cat(lo4, ohi).as_signed())
            else:
                pl3 = reg(f"q3pl{r}", 32, vlo * m2[r])
                ph3 = reg(f"q3ph{r}", signed(32), vhi.as_signed() * m2[r])
                p4.append(reg(f"q4p{r}", signed(48), Cat(pl3[:16], ph3 + pl3[16:])))
        shm4 = [reg(f"q4shm{r}", SH_BITS, shm3[r]) for r in range(R)]
        # S4/S5: t = p >> (sh - 1) (floor), saturated to [-1, 2*qtop + 1] (changes no clamped
        # result, Requant docstring). A negative p gives t <= -1, so t = -1; for p >= 0 only
        # the a+1 = act_bits_max+1 bits at sh-1 and "anything set above them" matter. So the
        # 48-bit barrel shift (the largest LUT group) is two small ones: S4 selects the
        # 16-bit window at a multiple of 8 (8-way mux) and whether anything above it is set,
        # S5 shifts the window by sh-1 mod 8 and saturates (an OR of the overflow).
        q5 = follow("q", 5, *q4)
        nb = self.act_bits_max + 1
        win5, ovf5, neg5, fine5 = [], [], [], []
        for r in range(R):
            pu = Cat(p4[r][:47], C(0, 25))          # |p| < 2**47 (v int32, m < 2**16)
            coarse = shm4[r][3:]
            wins = Array(pu[8 * k:8 * k + 16] for k in range(8))
            # "a bit of p at or above 8k + 16 is set", per k (suffix ORs of the bytes)
            above = Array(pu[8 * k + 16:47].any() if 8 * k + 16 < 47 else C(0, 1)
                          for k in range(8))
            win5.append(reg(f"q5w{r}", 16, wins[coarse]))
            ovf5.append(reg(f"q5o{r}", 1, above[coarse]))
            neg5.append(reg(f"q5n{r}", 1, p4[r][-1]))
            fine5.append(reg(f"q5f{r}", 3, shm4[r][:3]))
        q6 = follow("q", 6, *q5)
        tb = self.act_bits_max + 2
        t6 = []
        for r in range(R):
            fine = Signal(16, name=f"q5fine{r}")
            m.d.comb += fine.eq(win5[r] >> fine5[r])
            sat = Signal(nb, name=f"q5sat{r}")
            m.d.comb += sat.eq(fine[:nb] | Mux(ovf5[r] | fine[nb:].any(), (1 << nb) - 1, 0))
            t6.append(reg(f"q6t{r}", signed(tb), Mux(neg5[r], -1, sat)))
        # S6: round, q = (t + 1) >> 1 in [0, qtop + 1]
        q7v_, q7lv_, q7gap_ = follow("q", 7, *q6)
        q7 = (q7v_, q7d_, q7last_, q7lv_, q7gap_, q7tag_)
        r7 = [reg(f"q7r{r}", self.act_bits_max + 1, (t6[r] + 1) >> 1) for r in range(R)]
        # S7: clamp to the channel's qmax
        q8 = follow("q", 8, *q7)
        c8 = [reg(f"q8c{r}", 8, Mux(r7[r] > qm7[r], qm7[r], r7[r])) for r in range(R)]
        # S8: fused maxpool2: running max over the 4 window members, per channel
        q8v, q8d, q8last, q8lv, q8gap, q8tag = q8
        pool_on = Signal()
        m.d.comb += pool_on.eq(f["pool"] & ~q8gap)
        # The running maxima (P/R per requant lane) in a block RAM: read at q7, so the value
        # is there at q8; not transparent, as T >= 2 puts the previous position's write of a
        # step before the next position's read of it: COLLISION_FREE (a read at q7 and the
        # write at q8 of the same step are two positions apart).
        out9 = []
        for r in range(R):
            pmem = memory.Memory(shape=unsigned(8), depth=max(2, P // R), init=[],
                                 attrs={**small_attrs, **COLLISION_FREE})
            m.submodules[f"poolmax{r}"] = pmem
            pm_w = pmem.write_port()
            pm_r = pmem.read_port(domain="sync")
            cur = collision_read(m, pm_r, [pm_w])
            nv = Signal(8, name=f"pool_nv{r}")
            m.d.comb += [pm_r.addr.eq(q7[1]),
                         nv.eq(Mux((q8tag[:2] == 0) | (c8[r] > cur), c8[r], cur)),
                         pm_w.addr.eq(q8d), pm_w.data.eq(nv), pm_w.en.eq(q8v & pool_on)]
            out9.append(reg(f"q9o{r}", 8, Mux(pool_on, nv, c8[r])))
        o9v_n = Signal()
        m.d.comb += o9v_n.eq(q8v & ~f["raw"] & (~pool_on | (q8tag[:2] == 3)))
        o9v = reg("q9v", 1, o9v_n)
        q9d, q9last, q9lv, q9gap, q9fp = follow("q", 9, q8d, q8last, q8lv, q8gap, q8tag[2])
        # S9: fused gap sums, or the write request (registered; written the next cycle)
        gap_on = Signal()
        m.d.comb += gap_on.eq(f["gap"] & ~q9gap)
        # idle = no valid flag of v1..v6, dr_act, q1v..q8v, o9v and no write request, as a
        # flip-flop computed a cycle ahead from their next values (busy's, the drain's step,
        # q1v..q7v, o9v's, the write stage's request): the 17-input NOR in front of FLUSH's
        # group step (v6 -> idle -> grp, grow's clock enables, the whole iCEBreaker build's
        # critical path at seed 2, 26 ns; then wq_en -> idle -> grow's, seed 3, 24 ns) is
        # one flip-flop. Same cycle as the NOR: exact, no cycle added. idle is read only in
        # FLUSH and GAPFLUSH, entered from ISSUE and GAPLOAD: in those states and the cycle
        # before, the write stage is the only source of a write request (LOAD's comes only
        # in LOAD, the parameter port's only with no image in flight, the attention unit's
        # only in ATT).
        idle_r = Signal(init=1)
        m.d.sync += idle_r.eq(~(busy_n | dstep | q1v | q2v_ | q3[0] | q4[0] | q5[0] | q6[0]
                                | q7v_ | o9v_n | (o9v & ~gap_on & q9lv.any())))
        m.d.comb += idle.eq(idle_r)
        m.d.comb += gidx.eq(Mux(dr_gap, dr_d, q8d))
        for r in range(R):
            m.d.comb += [gsum_w[r].addr.eq(q9d), gsum_w[r].en.eq(o9v & gap_on),
                         gsum_w[r].data.eq(Mux(q9fp, out9[r], gsel[r] + out9[r]))]
        with m.If(o9v & ~gap_on):
            base = Mux(q9gap, gptr, wptr)
            m.d.sync += wq_buf.eq(f["dst"])
            if R == 2:
                m.d.sync += [wq_addr.eq(base + q9d), wq_en.eq(q9lv),
                             wq_data[0].eq(out9[0]), wq_data[1].eq(out9[1])]
            else:
                m.d.sync += [wq_addr.eq(base + (q9d >> 1)),
                             wq_en.eq(Mux(q9d[0], 0b10, 0b01) & Cat(q9lv, q9lv)),
                             wq_data[0].eq(out9[0]), wq_data[1].eq(out9[0])]
            with m.If(~q9gap & q9last):
                m.d.sync += wptr.eq(wptr + f["dst_cp2"])
            with m.If(q9last & (q9gap | gend)):
                # the group's last write: the next group's channel 0 (later statement wins)
                gnext = Signal(aw)
                m.d.comb += gnext.eq(gptr + P // 2)
                m.d.sync += [gptr.eq(gnext), wptr.eq(gnext)]
        if cfg.attention:
            at_hit = param_hit("attention", is_kind(ParamKind.LUT)
                               & row_below(cfg.attention_rows))
            self._attention(m, f, m1, banks, tables, pp, at_hit, att_rd, att_raddr,
                            att_start, att_done, wq_en, wq_addr, wq_data, wq_buf,
                            dynw, att_gat, att_gaddr, gat_r, ecp5)
        return m

    def _attention(self, m, f, m1, banks, tables, pp, at_hit, att_rd, att_raddr, att_start,
                   att_done, wq_en, wq_addr, wq_data, wq_buf, dynw, att_gat, att_gaddr,
                   gat_r, ecp5=False):
        """The attention unit: a channel_attention (op ECA) or spatial_attention (op SAM)
        pass over the map in ``src``, its output in ``dst`` (same layout).

        Phases (each a fixed number of cycles, :mod:`hw.overlay_timing`):

        * INIT: the constant words at ``cbase`` (bias; pool m, sh, qmax; z m, sh; gap m, sh;
          SAM: ctx m, sh) from the attention table into registers.
        * POOL: channel after channel, every pixel read once (one bank read a cycle) and
          summed in one accumulator (channel-major order: no per-channel sums RAM, no
          read-modify-write hazard); at a channel's last pixel its sum goes through the
          requant (the shared multiplier) and ``p[c]`` is written to the ``att_p`` RAM.
        * CONV, per output channel, strictly sequential. ECA: ``k`` taps (``p`` from
          ``att_p``, zero outside [0, C), the tap from the table) into ``z`` from the bias,
          the z requant and clamp to [-128, 127], the LUT read, ``a[c]`` into ``att_a``
          (``k + 10`` cycles: the LUT read must be over before the next channel's first tap
          read on the table's port). SAM: the row's bias ``ctx_bias[c]``, then ``C``
          products ``ctx_weight[c, j] * p[j]``, the ctx requant and clamp: ``u[c]`` into
          ``att_a`` (``C + 7`` cycles; a channel's z requant runs beside the next
          channel's first reads).
        * ECA, SCALE: channel after channel, every pixel read again and
          ``(x * a[c] + 128) >> 8`` (the shared multiplier, the requant's round-and-shift
          with sh = 8) written to ``dst`` at the same address; with a fused gap the scaled
          values are summed instead, 6 idle issue slots after each channel leave the
          multiplier to the gap requant, and ``dst`` receives the 1×1 map.
        * SAM, ZS: pixel after pixel (``2C + 10`` cycles): its ``C`` values read for
          ``z = bias + sum u[c] * x[c]``, the z requant, clamp, the LUT read (``s``), then
          its ``C`` values read again, ``(x * s + 128) >> 8`` written to ``dst``.
        * SAM with a fused gap, GAPR: channel after channel over ``dst``, summed, the gap
          requant, written in place as the 1×1 map (``gap[c]`` goes where pixel 0's
          channel ``c`` was, read already); 9 idle issue slots after each channel keep the
          write off the bank's single port while it reads.

        Between phases the unit waits until nothing is in flight (its pipeline's valid
        flags and the write request): a fixed number of cycles, the pipeline never stalls.
        The one multiplier is 33s × 16u (``v * m`` of a requant; the taps, the products and
        the scale fit it): an operand register, two registered partial products (two
        ``MULT18X18D`` with their input and output registers on ECP5) and their sum in
        ``att_prod``, so an item reaches A1 ``PIPE.att_mul`` = 2 cycles later than the
        product register alone would; the step counts and idle slots above include those
        cycles (``PIPE``). A map read has its request registered before the bank's address
        port and its value after the bank select (``PIPE.att_read``). The post-multiply
        stages are the requant's (round, floor shift, clamp).

        ``ecp5``: the partial products are instantiated ``MULT18X18D`` (``hw.dsp``) instead
        of fabric registers and ``*`` (same cycles).
        """
        cfg = self.config
        P = cfg.lanes
        W = _widths(cfg)
        aw = W["aw"]
        crows = cfg.channel_rows
        cw = max(1, ceil_log2(crows + 1))
        tw = max(len(f["cbase"]) + 2, ceil_log2(cfg.attention_rows + 1) + 1)

        def reg(name, shape, value=None):
            r = Signal(shape, name=name)
            if value is not None:
                m.d.sync += r.eq(value)
            return r

        # ---- memories: the attention table (parameter kind LUT), p and a per channel ----
        at_w, at_r = self._ram(m, "attention", 32, cfg.attention_rows)
        m.d.comb += [at_w.addr.eq(pp.row), at_w.data.eq(pp.data),
                     at_w.en.eq(at_hit)]
        p_w, p_r = self._ram(m, "att_p", 8, crows)
        a_w, a_r = self._ram(m, "att_a", 9, crows)

        (IDLE, INIT, POOL, PWAIT, CONV, CWAIT, SCALE, SWAIT, ZS, ZSWAIT, GAPR,
         GWAIT, GPOOL, EXP, EWAIT, DIV, MIX, MWAIT) = range(18)
        aph = Signal(range(18))
        with m.If(att_start):
            m.d.sync += aph.eq(INIT)
        sam = Signal()
        if "spatial_attention" in cfg.attention:
            m.d.comb += sam.eq(f["op"] == OP_SAM)
        dyn = Signal()
        if dynw is not None:
            m.d.comb += dyn.eq(f["op"] == OP_DYN)
        rowbias = Signal()      # CONV rows start from a table bias (SAM's ctx, DYN's att)
        m.d.comb += rowbias.eq(sam | dyn)
        tbase = Signal(len(f["cbase"]))      # the pass's attention-table base
        m.d.comb += tbase.eq(Mux(dyn, f["gap_ent"], f["cbase"]))
        in_conv = Signal()
        m.d.comb += in_conv.eq((aph == CONV) | (aph == CWAIT))

        # constants
        bias = reg("att_bias", signed(32))
        pool_m, z_m, gap_m, ctx_m = (reg(n, M_BITS) for n in ("att_pool_m", "att_z_m",
                                                              "att_gap_m", "att_ctx_m"))
        pool_sh, z_sh, gap_sh, ctx_sh = (reg(n, SH_BITS) for n in (
            "att_pool_sh", "att_z_sh", "att_gap_sh", "att_ctx_sh"))
        qmax = reg("att_qmax", 8)
        taps = f["cin"]                                      # ECA: k; SAM: C
        lutc = reg("att_lutc", tw)                           # the LUT's entry 128
        half = reg("att_half", 4)                            # ECA: (k - 1) / 2
        kreg = reg("att_k", 4)                               # DYN: K
        treg = reg("att_t", 8)                               # DYN: t
        rlast = reg("att_rlast", cw)                         # CONV: the last row
        tend = reg("att_tend", cw + 3)                       # CONV: the channel's last step
        tlast = reg("att_tlast", cw + 3)                     # CONV: the last tap's step
        e1 = reg("att_e1", cw + 3)                           # ZS: C + 10 (first s read)
        e2m1 = reg("att_e2m1", cw + 3)                       # ZS: 2C + 9 (the pixel's end)
        cba = reg("att_cba", tw)                             # SAM: ctx_bias[c]'s entry
        wrm1 = reg("att_wrm1", tw)                           # SAM: ctx_weight[c, 0]'s - 1

        ic = Signal(3)
        # DYN state (driven only with "dynamic_conv1x1" in cfg.attention)
        rf = Array(Signal(signed(34), name=f"att_r{k}") for k in range(8))   # r[k]
        rmax = Signal(signed(34), name="att_rmax")
        ef = Array(Signal(16, name=f"att_e{k}") for k in range(8))           # e[k]
        pf = Array(Signal(9, name=f"att_pi{k}") for k in range(8))           # pi[k]
        dstep = Signal(4)
        eiss = Signal()
        mk, ml = Signal(4), Signal(range(P))
        mi, mg = Signal(W["cin"] + 1), Signal(W["cout"] + 1)
        mrow, mo = Signal(W["wrow"]), Signal(W["cout"] + 1)
        mbias = Signal()
        mpg = Signal(range(P))
        x1k, x1first, x1last, x1bias = Signal(4), Signal(), Signal(), Signal()
        x1row, x1lane, x1ent = Signal(len(mrow)), Signal(len(ml)), Signal(W["cout"] + 1)
        # loop counters: channel c, pixel (x, y), address, c >> 1 (POOL, SCALE, GAPR);
        # ZS: the pixel's base address and the channel cc
        c = Signal(cw)
        lx = Signal(len(f["w"]))
        ly = Signal(len(f["h"]))
        addr = Signal(aw)
        cb = Signal(aw)
        gw = Signal(range(max(PIPE.att_gap_slots, PIPE.sam_gap_slots) + 1))  # idle issue
        #                          slots left after a channel (gap, GAPR)
        gs = Signal(2)           # GPOOL: 0 gather read, 1 its capture, 2 the pixels
        st = Signal(cw + 3)      # CONV, ZS: step
        pj = Signal(signed(cw + 5))  # CONV: p index of the tap, ECA c + st - half, SAM st - 1
        ta = Signal(tw)          # CONV: table entry of the tap
        pixbase = Signal(aw)
        cc = Signal(cw)

        lut_rd = Signal()
        lut_addr = Signal(tw)

        # ---- pipeline items (valid flags) ----
        r1v = Signal()          # a map value read
        t1v = Signal()          # a tap read (CONV)
        pgo = Signal()          # the sum of a channel is complete: its requant (pool, GAPR)
        zgo = Signal()          # z is complete: its requant
        zctx = Signal()         #   ... with ctx m, sh (SAM's u[c])
        ggo = Signal()          # ECA: the gap sum of a channel is complete: its requant
        a1v, a2v, a3v, a4v = (Signal(name=f"att_a{k}v") for k in range(1, 5))
        K_SUM, K_SCALE, K_Z = range(3)

        # channel-major issue (POOL, ECA SCALE, GAPR)
        issue = Signal()
        m.d.comb += issue.eq((aph == POOL) | (((aph == SCALE) | (aph == GAPR)) & (gw == 0)))
        last_pix = Signal()
        m.d.comb += last_pix.eq((lx == m1["w"]) & (ly == m1["h"]))
        first_pix = Signal()
        m.d.comb += first_pix.eq((lx == 0) & (ly == 0))
        last_c = Signal()
        m.d.comb += last_c.eq(c == m1["in_c"])
        # pixel-major reads (SAM ZS): z reads at st < C, scale reads at C + 6 <= st
        zs_z = Signal()
        zs_s = Signal()
        m.d.comb += [zs_z.eq((aph == ZS) & (st < f["in_c"])),
                     zs_s.eq((aph == ZS) & (st >= e1))]
        rd_any = Signal()
        gissue = Signal()       # DYN: a pool read through the gather entry
        m.d.comb += gissue.eq((aph == GPOOL) & (gs == 2))
        m.d.comb += rd_any.eq(issue | zs_z | zs_s | gissue)
        rkind = Signal(2)
        m.d.comb += rkind.eq(Mux(zs_z, K_Z, Mux(zs_s | (aph == SCALE), K_SCALE, K_SUM)))
        raddr = Signal(aw)
        m.d.comb += raddr.eq(Mux(aph == ZS, pixbase + (cc >> 1), addr))
        # stage 0: the read request registered before the bank's address port (the phase
        # and step state -> read issue -> address select -> the engine's bank address mux
        # -> the feature-map DP16KD's address was the next path once x2 was registered)
        r0v = Signal(name="att_r0v")
        r0addr = reg("att_r0addr", aw, raddr)
        r0aaddr = reg("att_r0aaddr", len(a_r.addr), Mux(aph == ZS, cc, c))
        m.d.sync += r0v.eq(rd_any)
        m.d.comb += [att_rd.eq(r0v), att_raddr.eq(r0addr), a_r.addr.eq(r0aaddr)]

        M_TAP, M_POOL, M_Z, M_SCALE, M_GAP, M_CTX, M_EXP = range(7)

        with m.Switch(aph):
            with m.Case(INIT):
                # read words cbase + 0..4 at ic = 0..4, capture each the cycle after
                m.d.sync += ic.eq(ic + 1)
                d = at_r.data
                with m.If(dyn):
                    # DYN: pool word, att m/sh (into z_m, z_sh), K | t << 8
                    with m.Switch(ic):
                        with m.Case(1):
                            m.d.sync += [pool_m.eq(d[:16]), pool_sh.eq(d[16:16 + SH_BITS]),
                                         qmax.eq(d[24:32])]
                        with m.Case(2):
                            m.d.sync += [z_m.eq(d[:16]), z_sh.eq(d[16:16 + SH_BITS])]
                        with m.Case(3):
                            m.d.sync += [kreg.eq(d[:4]), treg.eq(d[8:16]), rlast.eq(d[:4] - 1),
                                         wrm1.eq(tbase + DYN_HEAD + 256 + d[:4] - 1),
                                         ic.eq(0), aph.eq(GPOOL), c.eq(0), gs.eq(0)]
                with m.Switch(Mux(dyn, 7, ic)):
                    with m.Case(1):
                        m.d.sync += bias.eq(d.as_signed())
                    with m.Case(2):
                        m.d.sync += [pool_m.eq(d[:16]), pool_sh.eq(d[16:16 + SH_BITS]),
                                     qmax.eq(d[24:32])]
                    with m.Case(3):
                        m.d.sync += [z_m.eq(d[:16]), z_sh.eq(d[16:16 + SH_BITS])]
                    with m.Case(4, 5):
                        with m.If(ic == 4):
                            m.d.sync += [gap_m.eq(d[:16]), gap_sh.eq(d[16:16 + SH_BITS])]
                        with m.Else():
                            m.d.sync += [ctx_m.eq(d[:16]), ctx_sh.eq(d[16:16 + SH_BITS])]
                        with m.If((ic == 5) | ~sam):
                            m.d.sync += [ic.eq(0), aph.eq(POOL), c.eq(0), lx.eq(0),
                                         ly.eq(0), addr.eq(0), cb.eq(0), gw.eq(0)]
                with m.If(dyn):
                    m.d.sync += [lutc.eq(tbase + DYN_HEAD + 255),
                                 tend.eq(taps + PIPE.dyn_row - 1),
                                 tlast.eq(taps), cba.eq(tbase + DYN_HEAD + 256)]
                with m.Elif(sam):
                    m.d.sync += [rlast.eq(m1["in_c"]),
                                 lutc.eq(f["cbase"] + SAM_HEAD + 128),
                                 tend.eq(f["in_c"] + PIPE.sam_ctx_step - 1),
                                 tlast.eq(f["in_c"]),
                                 e1.eq(f["in_c"] + PIPE.sam_pix_step),
                                 e2m1.eq((f["in_c"] << 1) + PIPE.sam_pix_step - 1),
                                 cba.eq(f["cbase"] + SAM_HEAD + 256),
                                 wrm1.eq(f["cbase"] + SAM_HEAD + 256 + f["in_c"] - 1)]
                with m.Else():
                    m.d.sync += [rlast.eq(m1["in_c"]),
                                 lutc.eq(f["cbase"] + ECA_HEAD + 128 + taps),
                                 tend.eq(taps + PIPE.att_conv_step - 1), tlast.eq(taps - 1),
                                 wrm1.eq(f["cbase"] + ECA_HEAD)]
                m.d.sync += half.eq((taps - 1) >> 1)
            with m.Case(CONV):
                m.d.sync += [st.eq(st + 1), pj.eq(pj + 1), ta.eq(ta + 1)]
                with m.If(st == tend):
                    m.d.sync += [st.eq(0), c.eq(c + 1), pj.eq(Mux(rowbias, -1, c + 1 - half))]
                    with m.If(rowbias):
                        m.d.sync += [ta.eq(wrm1 + taps), wrm1.eq(wrm1 + taps),
                                     cba.eq(cba + 1)]
                    with m.Else():
                        m.d.sync += ta.eq(wrm1)
                    with m.If(c == rlast):
                        m.d.sync += aph.eq(CWAIT)
            with m.Case(ZS):
                m.d.sync += st.eq(st + 1)
                with m.If(zs_z | zs_s):
                    m.d.sync += cc.eq(Mux(cc == m1["in_c"], 0, cc + 1))
                with m.If(st == e2m1):
                    m.d.sync += [st.eq(0), pixbase.eq(pixbase + f["dst_cp2"])]
                    with m.If(lx == m1["w"]):
                        m.d.sync += [lx.eq(0), ly.eq(ly + 1)]
                    with m.Else():
                        m.d.sync += lx.eq(lx + 1)
                    with m.If(last_pix):
                        m.d.sync += aph.eq(ZSWAIT)

        # channel-major issue loop: address c >> 1 + pixel * cp2
        with m.If(issue):
            m.d.sync += addr.eq(addr + f["dst_cp2"])
            with m.If(lx == m1["w"]):
                m.d.sync += [lx.eq(0), ly.eq(ly + 1)]
            with m.Else():
                m.d.sync += lx.eq(lx + 1)
            with m.If(last_pix):
                nb = Mux(c[0], cb + 1, cb)
                m.d.sync += [ly.eq(0), c.eq(c + 1), cb.eq(nb), addr.eq(nb)]
                with m.If((aph == SCALE) & f["gap"]):
                    m.d.sync += gw.eq(PIPE.att_gap_slots)
                with m.If(aph == GAPR):
                    m.d.sync += gw.eq(PIPE.sam_gap_slots)
                with m.If(last_c):
                    m.d.sync += aph.eq(Mux(aph == POOL, PWAIT,
                                           Mux(aph == SCALE, SWAIT, GWAIT)))
        with m.If(gw != 0):
            m.d.sync += gw.eq(gw - 1)

        busy = Signal()
        x1v = Signal()          # DYN: a mixing tap read (MIX)
        a4e = Signal()          # DYN: an exp LUT read
        dwe = Signal()          # DYN: a mixed weight / bias write request
        mv = [Signal(name=f"att_m{k}v") for k in range(1, PIPE.att_mul + 1)]
        r2v = Signal(name="att_r2v")
        m.d.comb += busy.eq(r0v | r1v | r2v | t1v | pgo | zgo | ggo | Cat(*mv).any() | a1v
                            | a2v | a3v | a4v | x1v | a4e | dwe | (wq_en != 0))
        restart = [c.eq(0), lx.eq(0), ly.eq(0), addr.eq(0), cb.eq(0), gw.eq(0)]
        with m.If(~busy):
            with m.If(aph == PWAIT):
                m.d.sync += [aph.eq(CONV), c.eq(0), st.eq(0),
                             pj.eq(Mux(rowbias, -1, -half)), ta.eq(wrm1)]
            with m.If(aph == EWAIT):
                m.d.sync += [aph.eq(DIV), c.eq(0), dstep.eq(0)]
            with m.If(aph == CWAIT):
                m.d.sync += restart + [aph.eq(Mux(dyn, EXP, Mux(sam, ZS, SCALE))), st.eq(0),
                                       cc.eq(0), pixbase.eq(0)]
            with m.If(aph == ZSWAIT):
                with m.If(f["gap"]):
                    m.d.sync += restart + [aph.eq(GAPR)]
            with m.If((aph == SWAIT) | (aph == GWAIT) | ((aph == ZSWAIT) & ~f["gap"])
                      | (aph == MWAIT)):
                m.d.comb += att_done.eq(1)
                m.d.sync += aph.eq(IDLE)

        # ---- the attention table's read port: INIT words, SAM row bias, taps, the LUT ----
        t_iss = Signal()
        m.d.comb += t_iss.eq((aph == CONV) & (st >= sam) & (st <= tlast))
        p_rd_addr = pj[:max(1, ceil_log2(crows))]
        m.d.comb += p_r.addr.eq(p_rd_addr)
        with m.If(lut_rd):
            m.d.comb += at_r.addr.eq(lut_addr)
        with m.Elif(aph == INIT):
            m.d.comb += at_r.addr.eq(tbase + ic)
        with m.Elif(rowbias & (aph == CONV) & (st == 0)):
            m.d.comb += at_r.addr.eq(cba)
        with m.Else():
            m.d.comb += at_r.addr.eq(ta)
        cbias = reg("att_cbias", signed(32))
        with m.If(rowbias & (aph == CONV) & (st == 1)):
            m.d.sync += cbias.eq(at_r.data.as_signed())

        # ---- stage 1: the read data ----
        m.d.sync += [r1v.eq(r0v), t1v.eq(t_iss)]

        def rd1(name, shape, value):
            """``value`` at the read's issue, at stage 1 (through stage 0)."""
            return reg(f"att_r1{name}", shape, reg(f"att_r0{name}", shape, value))
        r1kind = rd1("kind", 2, rkind)
        r1first = rd1("first", 1, Mux(aph == ZS, cc == 0, first_pix))
        r1last = rd1("last", 1, Mux(aph == ZS, cc == m1["in_c"], last_pix))
        gbank = Signal()
        r1bank = rd1("bank", 1, Mux(aph == ZS, cc[0], Mux(aph == GPOOL, gbank, c[0])))
        gmask = Signal()
        r1mask = rd1("mask", 1, Mux(aph == GPOOL, gmask, 1))
        r1c = rd1("c", cw, Mux(aph == ZS, cc, c))
        r1addr = reg("att_r1addr", aw, r0addr)
        r1buf = rd1("buf", 1, Mux(aph == GAPR, f["dst"], f["src"]))
        t1first = reg("att_t1first", 1, st == sam)
        t1last = reg("att_t1last", 1, st == tlast)
        t1in = reg("att_t1in", 1, rowbias | ((pj >= 0) & (pj <= m1["in_c"])))
        rd = {key: val[3] for key, val in banks.items()}
        xval = Signal(8)
        m.d.comb += xval.eq(Mux(r1buf, Mux(r1bank, rd[1, 1], rd[1, 0]),
                                Mux(r1bank, rd[0, 1], rd[0, 0])))

        # ---- stage 2: the map value (and a[c] / u[c]) registered ----
        # The feature-map bank's block-RAM output (5.6 ns clock-to-out on ECP5) through the
        # bank/buffer select into the operand mux and the DSP's input register, or into the
        # pool sum's carry chain, was the ULX3S build's critical path once the multiplier
        # was pipelined (15.1 / 15.3 ns): the value is registered first (PIPE.att_read).
        assert PIPE.att_read == 2
        m.d.sync += r2v.eq(r1v)
        x2 = reg("att_x2", 8, xval)
        ar2 = reg("att_ar2", 9, a_r.data)
        r2kind = reg("att_r2kind", 2, r1kind)
        r2first = reg("att_r2first", 1, r1first)
        r2last = reg("att_r2last", 1, r1last)
        r2mask = reg("att_r2mask", 1, r1mask)
        r2c = reg("att_r2c", cw, r1c)
        r2addr = reg("att_r2addr", aw, r1addr)
        r2bank = reg("att_r2bank", 1, r1bank)

        # the pool / gap accumulator
        acc = Signal(signed(34), name="att_acc")
        rsum = r2v & (r2kind == K_SUM)
        xsum = Signal(8)
        m.d.comb += xsum.eq(Mux(r2mask, x2, 0))
        with m.If(rsum):
            m.d.sync += acc.eq(Mux(r2first, xsum, acc + xsum))
        m.d.sync += pgo.eq(rsum & r2last)
        pc = reg("att_pc", cw)
        with m.If(rsum & r2last):
            m.d.sync += pc.eq(r2c)
        gapr = Signal()
        m.d.comb += gapr.eq((aph == GAPR) | (aph == GWAIT))

        # ---- the multiplier (one use a cycle; items never collide by the schedule) ----
        ma = Signal(signed(33))
        mb = Signal(M_BITS)
        mode = Signal(3)
        z = Signal(signed(48), name="att_z")
        zc = reg("att_zc", cw)
        gc = reg("att_gc", cw)
        sreg = reg("att_s", 9)
        item_c = Signal(cw)
        item_addr = Signal(aw)
        item_bank = Signal()
        with m.If(pgo):
            m.d.comb += [ma.eq(acc), mb.eq(Mux(gapr, gap_m, pool_m)),
                         mode.eq(Mux(gapr, M_GAP, M_POOL)), item_c.eq(pc),
                         item_addr.eq(pc >> 1), item_bank.eq(pc[0])]
        with m.Elif(zgo):
            m.d.comb += [ma.eq(z), mb.eq(Mux(zctx, ctx_m, z_m)),
                         mode.eq(Mux(zctx, M_CTX, M_Z)), item_c.eq(zc)]
        with m.Elif(ggo):
            m.d.comb += [ma.eq(acc), mb.eq(gap_m), mode.eq(M_GAP), item_c.eq(gc),
                         item_addr.eq(gc >> 1), item_bank.eq(gc[0])]
        with m.Elif(t1v):
            m.d.comb += [ma.eq(at_r.data[:8].as_signed()), mb.eq(Mux(t1in, p_r.data, 0)),
                         mode.eq(M_TAP)]
        with m.Elif(eiss):
            m.d.comb += [ma.eq(rf[c] - rmax), mb.eq(z_m), mode.eq(M_EXP), item_c.eq(c)]
        with m.Elif(x1v):
            m.d.comb += [ma.eq(Mux(x1bias, at_r.data.as_signed(), at_r.data[:8].as_signed())),
                         mb.eq(pf[x1k]), mode.eq(M_TAP)]
        with m.Elif(r2kind == K_Z):
            m.d.comb += [ma.eq(ar2.as_signed()), mb.eq(x2), mode.eq(M_TAP)]
        with m.Else():
            m.d.comb += [ma.eq(x2), mb.eq(Mux(sam, sreg, ar2)), mode.eq(M_SCALE),
                         item_c.eq(r2c), item_addr.eq(r2addr), item_bank.eq(r2bank)]
        s1v = Signal()
        m.d.comb += s1v.eq(pgo | zgo | ggo | t1v | eiss | x1v | (r2v & (r2kind != K_SUM)))

        def pipe(name, shape, value):
            """``value`` of the item at the operand select, carried beside it through the
            multiplier's stages to A1 (``name``)."""
            for k in range(1, PIPE.att_mul + 1):
                value = reg(f"{name}_m{k}", shape, value)
            return reg(name, shape, value)

        # The product, PIPE.att_mul + 1 register stages after the operand select. The
        # unregistered att_p / table / LUT reads through the operand priority mux into the
        # 33s x 16u product and its carry chain was the ULX3S build's critical path (24.5 ns),
        # so the operands are registered first and the two 16-bit-wide partial products
        # (a = hi * 2^17 + lo, lo 17 bits unsigned, hi 16 bits signed; each fits one
        # MULT18X18D) are registered before their sum goes into att_prod. On ECP5 those
        # registers are the MULT18X18D blocks' own A/B input and output registers (hw.dsp):
        # register-to-register hops on each side of the block.
        assert PIPE.att_mul == 2
        plo = Signal(33, name="att_plo")             # lo * mb: 17u x 16u
        phi = Signal(signed(32), name="att_phi")     # hi * mb: 16s x 16u
        if ecp5:
            m.submodules.att_mul_lo = mult18x18d_registered(ma[:17], mb, plo)
            m.submodules.att_mul_hi = mult18x18d_registered(ma[17:].as_signed(), mb, phi)
        else:
            ma1 = reg("att_ma1", signed(33), ma)
            mb1 = reg("att_mb1", M_BITS, mb)
            m.d.sync += [plo.eq(ma1[:17] * mb1), phi.eq(ma1[17:].as_signed() * mb1)]
        prod = reg("att_prod", signed(33 + M_BITS), (phi << 17) + plo)
        m.d.sync += [mv[0].eq(s1v)] + [mv[k].eq(mv[k - 1]) for k in range(1, len(mv))]
        m.d.sync += a1v.eq(mv[-1])
        a1mode = pipe("att_a1mode", 3, mode)
        a1c = pipe("att_a1c", cw, item_c)
        a1addr = pipe("att_a1addr", aw, item_addr)
        a1bank = pipe("att_a1bank", 1, item_bank)
        a1first = pipe("att_a1first", 1, Mux(t1v, t1first, Mux(x1v, x1first, r2first)))
        a1last = pipe("att_a1last", 1, Mux(t1v, t1last, Mux(x1v, x1last, r2last)))

        # A1: a tap / product goes into z (from the bias, or SAM's row bias, at the first)
        a1tap = a1v & (a1mode == M_TAP)
        mixing = Signal()
        m.d.comb += mixing.eq((aph == MIX) | (aph == MWAIT))
        znext = Signal(signed(48))
        m.d.comb += znext.eq(Mux(a1first, Mux(mixing, 0, Mux(rowbias & in_conv, cbias,
                                                               bias)), z) + prod)
        with m.If(a1tap):
            m.d.sync += z.eq(znext)
        m.d.sync += [zgo.eq(a1tap & a1last & ~dyn), zctx.eq(sam & in_conv)]
        with m.If(a1tap & a1last):
            m.d.sync += zc.eq(c)

        # A2: round and floor shift: (v * m + (1 << (sh - 1))) >> sh (sh = 8 for the scale).
        # The item's sh is chosen at the operand select and its rounding constant made in
        # the multiplier's last stage, both registered beside the product: the mode -> sh
        # mux -> decrement -> one-hot decode in front of the add and the shift was the
        # ULX3S build's critical path once the multiplier was pipelined (18.2 ns).
        shs = Signal(SH_BITS)
        with m.Switch(mode):
            with m.Case(M_POOL):
                m.d.comb += shs.eq(pool_sh)
            with m.Case(M_Z, M_EXP):
                m.d.comb += shs.eq(z_sh)
            with m.Case(M_GAP):
                m.d.comb += shs.eq(gap_sh)
            with m.Case(M_CTX):
                m.d.comb += shs.eq(ctx_sh)
            with m.Default():
                m.d.comb += shs.eq(8)
        shm = shs
        for k in range(1, PIPE.att_mul + 1):
            shm = reg(f"att_sh_m{k}", SH_BITS, shm)
        sh = reg("att_a1sh", SH_BITS, shm)
        shm1 = Signal(SH_BITS)
        m.d.comb += shm1.eq(shm - 1)
        rnd = reg("att_a1rnd", 48, C(1, 48) << shm1)
        t2 = reg("att_t2", signed(52), (prod + rnd) >> sh)
        m.d.sync += a2v.eq(a1v & (a1mode != M_TAP))
        a2mode = reg("att_a2mode", 3, a1mode)
        a2c = reg("att_a2c", cw, a1c)
        a2addr = reg("att_a2addr", aw, a1addr)
        a2bank = reg("att_a2bank", 1, a1bank)
        a2first = reg("att_a2first", 1, a1first)
        a2last = reg("att_a2last", 1, a1last)

        # A3: clamp ([0, qmax]; [-128, 127] for z and u; the scale is in [0, 255] already)
        # (the bounds registered one stage early, from A1's mode: no decode before the
        # comparators)
        signed_out = (a1mode == M_Z) | (a1mode == M_CTX)
        lo = reg("att_a2lo", signed(10), Mux(signed_out, -128, Mux(a1mode == M_EXP, -255, 0)))
        hi = reg("att_a2hi", signed(10), Mux(signed_out, 127, Mux(a1mode == M_SCALE, 255,
                                                                  Mux(a1mode == M_EXP, 0,
                                                                      qmax))))
        q3 = reg("att_q3", signed(10), Mux(t2 < lo, lo, Mux(t2 > hi, hi, t2)))
        m.d.sync += a3v.eq(a2v)
        a3mode = reg("att_a3mode", 3, a2mode)
        a3c = reg("att_a3c", cw, a2c)
        a3addr = reg("att_a3addr", aw, a2addr)
        a3bank = reg("att_a3bank", 1, a2bank)
        a3first = reg("att_a3first", 1, a2first)
        a3last = reg("att_a3last", 1, a2last)

        # A3 consumers: p[c]; the LUT read (ECA a[c], SAM s); u[c]; the scale, or its gap
        # sum (ECA); a write to dst
        m.d.comb += [p_w.addr.eq(a3c), p_w.data.eq(q3[:8]),
                     p_w.en.eq(a3v & (a3mode == M_POOL))]
        m.d.comb += [lut_rd.eq(a3v & ((a3mode == M_Z) | (a3mode == M_EXP))),
                     lut_addr.eq(lutc + q3)]
        m.d.sync += a4v.eq(a3v & (a3mode == M_Z))
        a4c = reg("att_a4c", cw, a3c)
        ctx_w = a3v & (a3mode == M_CTX)
        m.d.comb += [a_w.addr.eq(Mux(ctx_w, a3c, a4c)),
                     a_w.data.eq(Mux(ctx_w, q3[:9], at_r.data[:9])),
                     a_w.en.eq(ctx_w | (a4v & ~sam))]
        with m.If(a4v & sam):
            m.d.sync += sreg.eq(at_r.data[:9])
        gsum = a3v & (a3mode == M_SCALE) & f["gap"] & ~sam
        with m.If(gsum):
            m.d.sync += acc.eq(Mux(a3first, q3, acc + q3))
        m.d.sync += ggo.eq(gsum & a3last)
        with m.If(gsum & a3last):
            m.d.sync += gc.eq(a3c)
        with m.If(a3v & (((a3mode == M_SCALE) & ~(f["gap"] & ~sam)) | (a3mode == M_GAP))):
            m.d.sync += [wq_en.eq(Mux(a3bank, 0b10, 0b01)), wq_addr.eq(a3addr),
                         wq_buf.eq(f["dst"]), wq_data[0].eq(q3[:8]), wq_data[1].eq(q3[:8])]

        if dynw is None:
            return

        # ---- DYN (dynamic_conv1x1's attention pass) ----
        # GPOOL: per conv input channel, its gather entry (bank, offset, dy, dx; 2 cycles),
        # then every pixel: the value at (y + dy, x + dx) of its source channel when inside
        # the map and y, x on the t grid, else 0 (summed as the POOL sums)
        gdy = Signal(signed(4))
        gdx = Signal(signed(4))
        xm = Signal(8)
        ym = Signal(8)
        yy = Signal(signed(len(f["h"]) + 2))
        xx = Signal(signed(len(f["w"]) + 2))
        m.d.comb += [yy.eq(ly + gdy), xx.eq(lx + gdx),
                     gmask.eq((xm == 0) & (ym == 0) & (yy >= 0) & (yy < f["h"]) & (xx >= 0)
                              & (xx < f["w"])),
                     att_gat.eq((aph == GPOOL) & (gs == 0)), att_gaddr.eq(f["gbase"] + c)]
        with m.If(aph == GPOOL):
            with m.If(gs == 0):
                m.d.sync += gs.eq(1)
            with m.If(gs == 1):
                gd = gat_r.data
                m.d.sync += [gs.eq(2), gbank.eq(gd[0]), addr.eq(gd[1:1 + aw]),
                             gdy.eq(gd[1 + aw:5 + aw]), gdx.eq(gd[5 + aw:9 + aw]),
                             lx.eq(0), ly.eq(0), xm.eq(0), ym.eq(0)]
            with m.If(gissue):
                m.d.sync += addr.eq(addr + f["dst_cp2"])
                with m.If(lx == m1["w"]):
                    m.d.sync += [lx.eq(0), ly.eq(ly + 1), xm.eq(0),
                                 ym.eq(Mux(ym == treg - 1, 0, ym + 1))]
                with m.Else():
                    m.d.sync += [lx.eq(lx + 1), xm.eq(Mux(xm == treg - 1, 0, xm + 1))]
                with m.If(last_pix):
                    m.d.sync += [gs.eq(0), c.eq(c + 1)]
                    with m.If(c == m1["cin"]):
                        m.d.sync += aph.eq(PWAIT)

        # RK (the CONV phase with K rows of cin taps from att_bias[k]): r[k], max r
        esum = Signal(20)
        with m.If(a1tap & a1last & dyn & in_conv):
            m.d.sync += rf[c].eq(znext)
            with m.If((c == 0) | (znext > rmax)):
                m.d.sync += rmax.eq(znext)

        # EXP: per k, e = exp_lut[clamp(rq(r[k] - max r, att_m, att_sh), -255, 0) + 255]
        m.d.comb += eiss.eq(aph == EXP)
        with m.If(eiss):
            m.d.sync += c.eq(c + 1)
            with m.If(c == rlast):
                m.d.sync += aph.eq(EWAIT)
        m.d.sync += a4e.eq(a3v & (a3mode == M_EXP))
        with m.If(a4e):
            m.d.sync += [ef[a4c].eq(at_r.data[:16]), esum.eq(esum + at_r.data[:16])]
        with m.If((aph == CWAIT) & dyn):
            m.d.sync += esum.eq(0)

        # DIV: pi[k] = (e[k] * 256) // sum e, restoring, 9 quotient bits (pi <= 256):
        # the remainder starts at e >> 1 (= (e << 8) >> 9 < sum e), then 9 steps
        rem = Signal(21)
        quo = Signal(9)
        rem2 = Signal(21)
        ge = Signal()
        m.d.comb += [rem2.eq(Cat(Mux(dstep == 1, ef[c][0], 0), rem)),
                     ge.eq(rem2 >= esum)]
        with m.If(aph == DIV):
            m.d.sync += dstep.eq(dstep + 1)
            with m.If(dstep == 0):
                m.d.sync += [rem.eq(ef[c] >> 1), quo.eq(0)]
            with m.Else():
                m.d.sync += [rem.eq(Mux(ge, rem2 - esum, rem2)), quo.eq(Cat(ge, quo))]
            with m.If(dstep == 9):
                m.d.sync += [pf[c].eq(Cat(ge, quo)), dstep.eq(0), c.eq(c + 1)]
                with m.If(c == rlast):
                    m.d.sync += [aph.eq(MIX), ta.eq(wrm1 + 1), mk.eq(0), ml.eq(0), mi.eq(0),
                                 mg.eq(0), mrow.eq(f["wbase"]), mo.eq(0), mbias.eq(0),
                                 mpg.eq(Mux(m1["groups"] == 0, f["last_group"] - 1, P - 1))]

        # MIX: the table's weights (in the weight memory's order) and biases, K taps each,
        # pi[k] * w into z, then (z + 128) >> 8 written to the conv's weight row / lane or
        # its bias entry
        miss = Signal()
        m.d.comb += miss.eq(aph == MIX)
        with m.If(miss):
            m.d.sync += [ta.eq(ta + 1), mk.eq(mk + 1)]
            with m.If(mk == rlast):
                m.d.sync += mk.eq(0)
                with m.If(~mbias):
                    m.d.sync += ml.eq(ml + 1)
                    with m.If(ml == mpg):
                        m.d.sync += [ml.eq(0), mrow.eq(mrow + 1), mi.eq(mi + 1)]
                        with m.If(mi == m1["cin"]):
                            m.d.sync += [mi.eq(0), mg.eq(mg + 1),
                                         mpg.eq(Mux(mg + 1 == m1["groups"],
                                                    f["last_group"] - 1, P - 1))]
                            with m.If(mg == m1["groups"]):
                                m.d.sync += mbias.eq(1)
                with m.Else():
                    m.d.sync += mo.eq(mo + 1)
                    with m.If(mo + 1 == f["cout"]):
                        m.d.sync += aph.eq(MWAIT)
        m.d.sync += [x1v.eq(miss), x1k.eq(mk), x1first.eq(mk == 0), x1last.eq(mk == rlast),
                     x1bias.eq(mbias), x1row.eq(mrow), x1lane.eq(ml), x1ent.eq(f["cbase"] + mo)]
        a1bias = pipe("att_a1bias", 1, x1bias)
        a1row = pipe("att_a1row", len(mrow), x1row)
        a1lane = pipe("att_a1lane", len(ml), x1lane)
        a1ent = pipe("att_a1ent", len(x1ent), x1ent)
        rounded = Signal(signed(48))
        m.d.comb += rounded.eq((znext + 128) >> 8)
        dw_w = Signal()
        dw_b = Signal()
        m.d.sync += [dw_w.eq(a1tap & a1last & mixing & ~a1bias),
                     dw_b.eq(a1tap & a1last & mixing & a1bias)]
        with m.If(a1tap & a1last & mixing):
            m.d.sync += [dynw["wrow"].eq(a1row), dynw["wlane"].eq(a1lane),
                         dynw["wdata"].eq(rounded[:8]), dynw["bent"].eq(a1ent),
                         dynw["bdata"].eq(rounded[:32])]
        m.d.comb += [dwe.eq(dw_w | dw_b), dynw["wwe"].eq(dw_w), dynw["bwe"].eq(dw_b)]
